//! `POST /graphql`: the schema, merged from the resolvers of the API, the
//! state backend and run logs, and its HTTP endpoint.
//!
//! async-graphql-warp 7 is built on warp 0.3, so the endpoint is written here
//! for warp 0.4: body limit, bearer token to caller, JSON to request, the
//! document's cost and its variables checked ([`Admission`]), execution with
//! the caller in the request data, JSON out. Failures before
//! GraphQL runs are answered in GraphQL's own shape (`{"errors": [...]}` with
//! a code in `extensions`), so GraphQL clients parse one format; every other
//! route answers the shape of `hangar_types::http`.

use std::sync::Arc;

use async_graphql::{EmptySubscription, MergedObject, Schema};
use bytes::Buf;
use futures::Stream;
use serde::Deserialize;
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::reply::{Reply, Response};

use crate::App;
use crate::api::{self, Identity, LoginGate, PoolDirectory, Source};
use crate::listener::RemoteAddr;
use crate::http::{HttpError, caller, json_response, read_limited};

#[derive(MergedObject, Default)]
pub struct Query(
    api::auth::AuthQuery,
    api::stacks::StacksQuery,
    api::runs::RunsQuery,
    api::pools::PoolsQuery,
    api::audit::AuditQuery,
    crate::state::api::StateQuery,
    api::vcs::VcsQuery,
    crate::logs::api::LogsQuery,
    api::policies::PoliciesQuery,
    api::modules::ModulesQuery,
    api::spaces::SpacesQuery,
);

#[derive(MergedObject, Default)]
pub struct Mutation(
    api::auth::AuthMutation,
    api::stacks::StacksMutation,
    api::runs::RunsMutation,
    api::pools::PoolsMutation,
    crate::state::api::StateMutation,
    api::worker_admin::WorkerAdminMutation,
    api::vcs::VcsMutation,
    api::policies::PoliciesMutation,
    api::bundles::BundlesMutation,
    api::modules::ModulesMutation,
    api::spaces::SpacesMutation,
);

pub type ApiSchema = Schema<Query, Mutation, EmptySubscription>;

/// Limits on what one query may ask for.
#[derive(Debug, Clone, Copy)]
pub struct QueryLimits {
    pub max_depth: usize,
    pub max_complexity: usize,
}

pub fn schema(app: Arc<App>, limits: QueryLimits) -> ApiSchema {
    Schema::build(Query::default(), Mutation::default(), EmptySubscription)
        .data(app)
        .limit_depth(limits.max_depth)
        .limit_complexity(limits.max_complexity)
        // Bounds the parser's recursion, whatever the depth limit says.
        .limit_recursive_depth(64)
        .limit_directives(16)
        // Suggestions ("did you mean ...") would describe the schema to anyone.
        .disable_suggestions()
        .finish()
}

/// What a request must pass before async-graphql parses, validates and runs
/// it: its cost within the caller's budget ([`api::cost`]), and its variables
/// of the types their operation declares ([`api::variables`]).
#[derive(Debug, Clone)]
pub struct Admission {
    /// The budget of a caller with a token (`server.max_query_complexity`);
    /// callers without one get [`api::cost::ANONYMOUS_BUDGET`].
    pub budget: u64,
    pub inputs: api::variables::InputTypes,
}

impl Admission {
    pub fn new(schema: &ApiSchema, limits: QueryLimits) -> Admission {
        Admission { budget: limits.max_complexity as u64, inputs: api::variables::InputTypes::from_sdl(&schema.sdl()) }
    }

    /// Refuses `request` when its document costs more than the caller's
    /// budget or its variables do not fit their declared types; the message
    /// and GraphQL error code. A document that does not parse is left to
    /// async-graphql to report.
    pub fn check(
        &self,
        request: &mut async_graphql::Request,
        anonymous: bool,
        variables: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<(), (String, &'static str)> {
        let operation = request.operation_name.clone();
        let Ok(doc) = request.parsed_query() else { return Ok(()) };
        let budget = if anonymous { api::cost::ANONYMOUS_BUDGET } else { self.budget };
        api::cost::check(doc, budget, anonymous).map_err(|e| (e.to_string(), "QUERY_TOO_COMPLEX"))?;
        self.inputs.check(doc, operation.as_deref(), variables).map_err(|e| (e, "BAD_USER_INPUT"))
    }
}

/// The body of `POST /graphql` (GraphQL over HTTP). Unknown keys are refused
/// rather than ignored.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct GraphQlBody {
    query: String,
    #[serde(default)]
    operation_name: Option<String>,
    #[serde(default)]
    variables: Option<serde_json::Value>,
    #[serde(default)]
    extensions: Option<serde_json::Map<String, serde_json::Value>>,
}

/// `POST /graphql`; any other method on the path is answered 405.
pub(crate) fn route(app: Arc<App>, schema: ApiSchema, admission: Admission, max_body: u64) -> BoxedFilter<(Response,)> {
    let admission = Arc::new(admission);
    let post = warp::path!("graphql")
        .and(warp::post())
        .and(warp::header::optional::<String>("authorization"))
        .and(warp::header::optional::<String>("content-type"))
        .and(warp::header::optional::<u64>("content-length"))
        .and(warp::ext::optional::<RemoteAddr>())
        .and(warp::body::stream())
        .then(move |auth, content_type, length, remote: Option<RemoteAddr>, body| {
            let (app, schema, admission) = (app.clone(), schema.clone(), admission.clone());
            let req = GraphQlRequest { auth, content_type, length, source: remote.map(|r| r.0.ip()) };
            async move { execute(app, schema, &admission, max_body, req, body).await }
        });
    let other = warp::path!("graphql").map(|| error_response(HttpError::MethodNotAllowed));
    post.or(other).unify().boxed()
}

/// A failure before execution, in GraphQL's shape.
fn error_response(e: HttpError) -> Response {
    let body = serde_json::json!({
        "errors": [{ "message": e.to_string(), "extensions": { "code": e.code().as_str() } }]
    });
    let mut r = json_response(e.status(), &body);
    if matches!(e, HttpError::InvalidToken) {
        r.headers_mut().insert(warp::http::header::WWW_AUTHENTICATE, warp::http::HeaderValue::from_static("Bearer"));
    }
    r
}

/// What `POST /graphql` carries besides its body.
struct GraphQlRequest {
    auth: Option<String>,
    content_type: Option<String>,
    length: Option<u64>,
    /// The client's address, for the login throttle.
    source: Option<std::net::IpAddr>,
}

async fn execute<S, B>(
    app: Arc<App>,
    schema: ApiSchema,
    admission: &Admission,
    max_body: u64,
    req: GraphQlRequest,
    body: S,
) -> Response
where
    S: Stream<Item = Result<B, warp::Error>>,
    B: Buf,
{
    let GraphQlRequest { auth, content_type, length, source } = req;
    // Refuse a declared oversize body without reading it.
    if let Some(declared) = length.filter(|l| *l > max_body) {
        return error_response(HttpError::BodyTooLarge { limit: max_body, read: declared });
    }
    let json_type = content_type
        .as_deref()
        .and_then(|c| c.split(';').next())
        .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"));
    if !json_type {
        return error_response(HttpError::UnsupportedMediaType);
    }
    let bytes = match read_limited(body, max_body).await {
        Ok(b) => b,
        Err(e) => return error_response(e),
    };
    let caller = match caller(&app, auth.as_deref()).await {
        Ok(c) => c,
        Err(e) => return error_response(e),
    };
    let parsed: GraphQlBody = match serde_json::from_slice(&bytes) {
        Ok(b) => b,
        Err(e) => return error_response(HttpError::Malformed(e.to_string())),
    };
    let mut request = async_graphql::Request::new(parsed.query);
    if let Some(op) = parsed.operation_name {
        request = request.operation_name(op);
    }
    let variables = match parsed.variables {
        None | Some(serde_json::Value::Null) => serde_json::Map::new(),
        Some(serde_json::Value::Object(v)) => v,
        Some(_) => return error_response(HttpError::Malformed("variables must be an object".into())),
    };
    let _ = parsed.extensions;
    if let Err((message, code)) = admission.check(&mut request, caller.is_none(), &variables) {
        tracing::info!(code, reason = %message, anonymous = caller.is_none(), "GraphQL request refused before validation");
        let body = serde_json::json!({ "errors": [{ "message": message, "extensions": { "code": code } }] });
        return json_response(warp::http::StatusCode::OK, &body);
    }
    request = request.variables(async_graphql::Variables::from_json(serde_json::Value::Object(variables)));
    if caller.is_none() {
        request = request.disable_introspection();
    }
    let request = request.data(Identity(caller)).data(PoolDirectory::default()).data(LoginGate::default()).data(Source(source));
    let response = schema.execute(request).await;
    warp::reply::json(&response).into_response()
}
