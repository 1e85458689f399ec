//! Spaces and the roles granted in them. A space is seen by whoever holds a
//! role in it (or above it); its grants are read and changed by its admins; a
//! space is created and deleted by the admins of its parent, so a team admin
//! can shape the tree below the team but never the team's own place in it.

use async_graphql::{Context, ID, Object, SimpleObject};
use chrono::{DateTime, Utc};
use diesel_async::AsyncConnection;
use hangar_store::spaces::{self as store, Grantee, NamedGrant, SpaceRow};
use hangar_store::{audit, stacks, users};
use hangar_types::Role;
use serde_json::json;

use super::stacks::check_slug;
use super::types::{Stack, UserRole};
use super::{ApiError, caller, check_in, conn, space_for};

pub struct Space(pub SpaceRow);

/// A role granted in a space, to a user or to one of a user's API keys.
#[derive(SimpleObject)]
pub struct SpaceGrant {
    pub id: ID,
    /// The user's e-mail (the key's owner for an API key).
    pub user: String,
    /// The API key's id and name, for a grant to a key.
    pub api_key_id: Option<ID>,
    pub api_key_name: Option<String>,
    pub role: UserRole,
    pub granted_by: String,
    pub created_at: DateTime<Utc>,
}

impl From<NamedGrant> for SpaceGrant {
    fn from(g: NamedGrant) -> Self {
        SpaceGrant {
            id: ID(g.grant.id.to_string()),
            user: g.email,
            api_key_id: g.grant.api_key_id.map(|k| ID(k.to_string())),
            api_key_name: g.key_name,
            role: g.grant.role().into(),
            granted_by: g.grant.granted_by,
            created_at: g.grant.created_at,
        }
    }
}

/// The space `id` as an object, when the caller sees it.
pub(crate) async fn space_object(ctx: &Context<'_>, id: i64) -> async_graphql::Result<Option<Space>> {
    let caller = caller(ctx)?;
    if !caller.sees(id) {
        return Ok(None);
    }
    let mut c = conn(ctx).await?;
    Ok(store::space_by_id(&mut c, id).await.map_err(ApiError::from)?.map(Space))
}

#[Object]
impl Space {
    async fn id(&self) -> ID {
        ID(self.0.id.to_string())
    }
    async fn slug(&self) -> &str {
        &self.0.slug
    }
    async fn name(&self) -> &str {
        &self.0.name
    }
    async fn description(&self) -> &str {
        &self.0.description
    }
    async fn created_at(&self) -> DateTime<Utc> {
        self.0.created_at
    }
    /// The space above; null for the root, and for a space whose parent the
    /// caller cannot see.
    async fn parent(&self, ctx: &Context<'_>) -> async_graphql::Result<Option<Space>> {
        match self.0.parent_id {
            Some(p) => space_object(ctx, p).await,
            None => Ok(None),
        }
    }
    /// The caller's role here, with the grants above counted.
    async fn my_role(&self, ctx: &Context<'_>) -> async_graphql::Result<UserRole> {
        Ok(caller(ctx)?.access.role_in(self.0.id).into())
    }
    /// The stacks of this space (not of the spaces below).
    async fn stacks(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<Stack>> {
        caller(ctx)?;
        let mut c = conn(ctx).await?;
        let all = stacks::list_stacks(&mut c, None).await.map_err(ApiError::from)?;
        Ok(all.into_iter().filter(|s| s.space_id == self.0.id).map(Stack).collect())
    }
    /// The roles granted in this space itself (admins of the space only).
    async fn grants(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<SpaceGrant>> {
        let caller = caller(ctx)?;
        check_in(caller, self.0.id, Role::Admin, "space", &self.0.slug)?;
        let mut c = conn(ctx).await?;
        Ok(store::grants_in(&mut c, self.0.id).await.map_err(ApiError::from)?.into_iter().map(SpaceGrant::from).collect())
    }
}

#[derive(Default)]
pub struct SpacesQuery;

#[Object]
impl SpacesQuery {
    /// Every space the caller sees, by slug.
    async fn spaces(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<Space>> {
        let caller = caller(ctx)?;
        let mut c = conn(ctx).await?;
        let all = store::list_spaces(&mut c).await.map_err(ApiError::from)?;
        Ok(all.into_iter().filter(|s| caller.sees(s.id)).map(Space).collect())
    }

    async fn space(&self, ctx: &Context<'_>, slug: String) -> async_graphql::Result<Option<Space>> {
        let caller = caller(ctx)?;
        let mut c = conn(ctx).await?;
        Ok(store::space_by_slug(&mut c, &slug).await.map_err(ApiError::from)?.filter(|s| caller.sees(s.id)).map(Space))
    }
}

#[derive(Default)]
pub struct SpacesMutation;

/// Who a grant is for: a user by e-mail, or an API key by id.
async fn grantee(
    c: &mut diesel_async::AsyncPgConnection,
    user: Option<String>,
    api_key: Option<ID>,
) -> Result<(Grantee, String), ApiError> {
    match (user, api_key) {
        (Some(email), None) => {
            let u = users::user_by_email(c, &email).await?.ok_or_else(|| ApiError::not_found("user", email))?;
            Ok((Grantee::User(u.id), u.email))
        }
        (None, Some(key)) => {
            let id = super::id(&key, "apiKey")?;
            let k = users::get_api_key(c, id).await?.ok_or_else(|| ApiError::not_found("API key", id.to_string()))?;
            Ok((Grantee::ApiKey(k.id), format!("API key {} ({})", k.name, k.id)))
        }
        _ => Err(ApiError::invalid("user", "give exactly one of user (an e-mail) and apiKey")),
    }
}

#[Object]
impl SpacesMutation {
    /// Creates a space below `parent` (the root when absent); needs the admin
    /// role in the parent.
    async fn create_space(
        &self,
        ctx: &Context<'_>,
        slug: String,
        name: String,
        #[graphql(default)] description: String,
        parent: Option<String>,
    ) -> async_graphql::Result<Space> {
        let caller = caller(ctx)?.clone();
        check_slug("slug", &slug)?;
        super::stacks::check_text("name", &name, 1, 200)?;
        super::stacks::check_text("description", &description, 0, 2000)?;
        let mut c = conn(ctx).await?;
        let row = c
            .transaction::<_, ApiError, _>(async move |c| {
                let parent = space_for(c, &caller, parent.as_deref(), Role::Admin).await?;
                let row = store::create_space(c, &slug, &name, &description, parent.id).await?;
                audit::record(c, &caller.actor(), "space.create", &format!("space:{slug}"), json!({ "parent": parent.slug, "name": name }))
                    .await?;
                Ok(row)
            })
            .await?;
        Ok(Space(row))
    }

    /// Deletes an empty space (no spaces below, nothing in it); needs the
    /// admin role in its parent. Its grants go with it.
    async fn delete_space(&self, ctx: &Context<'_>, slug: String) -> async_graphql::Result<bool> {
        let caller = caller(ctx)?.clone();
        let mut c = conn(ctx).await?;
        c.transaction::<_, ApiError, _>(async move |c| {
            let space = space_for(c, &caller, Some(&slug), Role::Reader).await?;
            let Some(parent) = space.parent_id else {
                return Err(ApiError::Refused("the root space cannot be deleted".into()));
            };
            // The space is seen; its parent may not be, and is not named.
            if !caller.may(parent, Role::Admin) {
                return Err(ApiError::Forbidden { needed: Role::Admin });
            }
            let inside = store::contents(c, space.id).await?;
            if !inside.is_empty() {
                let what: Vec<String> = inside.iter().map(|(kind, n)| format!("{n} {kind}")).collect();
                return Err(ApiError::Refused(format!("space {slug} is not empty: it holds {}", what.join(", "))));
            }
            store::delete_space(c, space.id).await?;
            audit::record(c, &caller.actor(), "space.delete", &format!("space:{slug}"), json!({})).await?;
            Ok(())
        })
        .await?;
        Ok(true)
    }

    /// Grants `role` in `space` (and every space below) to a user or an API
    /// key, replacing their earlier grant there; needs the admin role in the
    /// space.
    async fn grant_space_role(
        &self,
        ctx: &Context<'_>,
        space: String,
        user: Option<String>,
        api_key: Option<ID>,
        role: UserRole,
    ) -> async_graphql::Result<Space> {
        let caller = caller(ctx)?.clone();
        let role: Role = role.into();
        if role == Role::NoAccess {
            return Err(ApiError::invalid("role", "must be READER, WRITER or ADMIN (revoke a grant to take it away)").into());
        }
        let mut c = conn(ctx).await?;
        let row = c
            .transaction::<_, ApiError, _>(async move |c| {
                let target = space_for(c, &caller, Some(&space), Role::Admin).await?;
                let (who, named) = grantee(c, user, api_key).await?;
                store::grant(c, target.id, who, role, &caller.actor()).await?;
                audit::record(c, &caller.actor(), "space.grant", &format!("space:{space}"), json!({ "to": named, "role": role.as_str() }))
                    .await?;
                Ok(target)
            })
            .await?;
        Ok(Space(row))
    }

    /// Takes back the grant of a user or an API key in `space`; needs the
    /// admin role in the space. Grants above it still hold.
    async fn revoke_space_role(
        &self,
        ctx: &Context<'_>,
        space: String,
        user: Option<String>,
        api_key: Option<ID>,
    ) -> async_graphql::Result<bool> {
        let caller = caller(ctx)?.clone();
        let mut c = conn(ctx).await?;
        Ok(c.transaction::<_, ApiError, _>(async move |c| {
            let target = space_for(c, &caller, Some(&space), Role::Admin).await?;
            let (who, named) = grantee(c, user, api_key).await?;
            if !store::revoke(c, target.id, who).await? {
                return Err(ApiError::not_found("grant", format!("{named} in {space}")));
            }
            audit::record(c, &caller.actor(), "space.revoke", &format!("space:{space}"), json!({ "to": named })).await?;
            Ok(true)
        })
        .await?)
    }
}
