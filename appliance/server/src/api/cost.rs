//! What a GraphQL document costs, measured on the parsed document before
//! async-graphql validates it, so that a query too costly for its caller is
//! refused before any of that cost is paid.
//!
//! async-graphql's own limits (depth, complexity) are computed by walking the
//! document with every fragment spread expanded, as are several validation
//! rules: a one-kilobyte query whose fragments each spread the next one twice
//! expands to 2^26 selections and holds a core for tens of seconds before it is
//! found too complex. Here each fragment's expanded size is computed once and
//! reused wherever it is spread, so measuring is linear in the document, and a
//! fragment that spreads itself (directly or through others) is refused on the
//! spot rather than expanded.
//!
//! The unit is one selection (a field, a fragment spread or an inline
//! fragment) once every spread is expanded, summed over every operation of
//! the document (validation visits them all). Callers without a token may do
//! nothing but log in, so they get the smallest budget.

use std::collections::HashMap;

use async_graphql::parser::types::{ExecutableDocument, Selection, SelectionSet};

/// The budget of a caller without a token: a login and its answer, with room.
pub(crate) const ANONYMOUS_BUDGET: u64 = 50;

/// Why a document is refused before validation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum CostError {
    #[error(
        "query is too complex: with its fragments expanded it holds {} selections; at most {limit} are allowed{}",
        shown(*selections),
        if *anonymous { " without a token" } else { "" }
    )]
    TooComplex { selections: u64, limit: u64, anonymous: bool },
    #[error("fragment {name:?} spreads itself, directly or through other fragments")]
    FragmentCycle { name: String },
}

/// Sizes past the limit are only known to be past it: counting stops there.
fn shown(selections: u64) -> String {
    if selections == u64::MAX { "more than 18446744073709551614".into() } else { selections.to_string() }
}

/// The expanded size of `doc`, or why it cannot be had within `limit`.
pub(crate) fn check(doc: &ExecutableDocument, limit: u64, anonymous: bool) -> Result<u64, CostError> {
    let fragments = fragment_sizes(doc)?;
    let mut total: u64 = 0;
    for (_, op) in doc.operations.iter() {
        total = total.saturating_add(size_of(&op.node.selection_set.node, &fragments));
    }
    // Fragment definitions are validated once each, expanded or not.
    for f in doc.fragments.values() {
        total = total.saturating_add(direct(&f.node.selection_set.node).0);
    }
    if total > limit {
        return Err(CostError::TooComplex { selections: total, limit, anonymous });
    }
    Ok(total)
}

/// Selections of `set` not counting what spreads bring, and the names spread
/// (once per spread). Nesting is bounded by the parser's recursion limit.
fn direct(set: &SelectionSet) -> (u64, Vec<&str>) {
    let mut count = 0u64;
    let mut spreads = Vec::new();
    walk(set, &mut count, &mut spreads);
    (count, spreads)
}

fn walk<'a>(set: &'a SelectionSet, count: &mut u64, spreads: &mut Vec<&'a str>) {
    for item in &set.items {
        *count = count.saturating_add(1);
        match &item.node {
            Selection::Field(f) => walk(&f.node.selection_set.node, count, spreads),
            Selection::InlineFragment(i) => walk(&i.node.selection_set.node, count, spreads),
            Selection::FragmentSpread(s) => spreads.push(s.node.fragment_name.node.as_str()),
        }
    }
}

/// The size of `set` with the fragments it spreads expanded.
fn size_of(set: &SelectionSet, fragments: &HashMap<&str, u64>) -> u64 {
    let (count, spreads) = direct(set);
    spreads
        .iter()
        // An unknown fragment is validation's to report; it costs nothing here.
        .map(|name| fragments.get(name).copied().unwrap_or(0))
        .fold(count, u64::saturating_add)
}

/// Every fragment's expanded size, each computed once, in dependency order,
/// without recursion (a chain of thousands of fragments must not exhaust the
/// stack).
fn fragment_sizes(doc: &ExecutableDocument) -> Result<HashMap<&str, u64>, CostError> {
    let own: HashMap<&str, (u64, Vec<&str>)> =
        doc.fragments.iter().map(|(name, f)| (name.as_str(), direct(&f.node.selection_set.node))).collect();
    let mut sizes: HashMap<&str, u64> = HashMap::with_capacity(own.len());
    let mut visiting: std::collections::HashSet<&str> = std::collections::HashSet::new();
    // In the order the document declares them, so that a cycle is always
    // reported by the same name.
    let mut starts: Vec<(&str, _)> = doc.fragments.iter().map(|(name, f)| (name.as_str(), f.pos)).collect();
    starts.sort_by_key(|&(_, pos)| (pos.line, pos.column));
    for (start, _) in starts {
        if sizes.contains_key(start) {
            continue;
        }
        // Depth-first: a fragment is finished once everything it spreads is.
        let mut stack: Vec<(&str, usize)> = vec![(start, 0)];
        visiting.insert(start);
        while let Some(top) = stack.last_mut() {
            let (name, next) = *top;
            let (count, spreads) = &own[name];
            if let Some(&child) = spreads.get(next) {
                top.1 += 1;
                if sizes.contains_key(child) || !own.contains_key(child) {
                    continue;
                }
                if !visiting.insert(child) {
                    return Err(CostError::FragmentCycle { name: child.to_string() });
                }
                stack.push((child, 0));
                continue;
            }
            let size = spreads
                .iter()
                .map(|c| sizes.get(c).copied().unwrap_or(0))
                .fold(*count, u64::saturating_add);
            sizes.insert(name, size);
            visiting.remove(name);
            stack.pop();
        }
    }
    Ok(sizes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_graphql::parser::parse_query;

    fn cost(q: &str, limit: u64) -> Result<u64, CostError> {
        check(&parse_query(q).unwrap(), limit, false)
    }

    /// The query of the report: 26 fragments, each spreading the next twice.
    pub(crate) fn fan_out(levels: usize) -> String {
        let mut q = String::from("query{me{...M0}}");
        for i in 0..levels {
            q.push_str(&format!(" fragment M{i} on User{{...M{n} ...M{n}}}", n = i + 1));
        }
        q.push_str(&format!(" fragment M{levels} on User{{email}}"));
        q
    }

    #[test]
    fn plain_queries_cost_one_per_selection() {
        assert_eq!(cost("{ me { email role } }", 100).unwrap(), 3);
        assert_eq!(cost("query { a: me { email } b: me { ... on User { email } } }", 100).unwrap(), 5);
        // A fragment is counted where it is spread, and once as a definition.
        assert_eq!(cost("{ me { ...F } } fragment F on User { email role }", 100).unwrap(), 2 + 2 + 2);
    }

    #[test]
    fn fan_out_is_measured_without_being_expanded() {
        let q = fan_out(26);
        assert!(q.len() < 1100, "{}", q.len());
        let started = std::time::Instant::now();
        let e = cost(&q, 2000).unwrap_err();
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
        let CostError::TooComplex { selections, limit: 2000, anonymous: false } = e else { panic!("{e:?}") };
        assert!(selections > 1 << 26, "{selections}");
        // Deep enough to overflow any counter: it saturates, and is refused.
        let e = cost(&fan_out(200), 2000).unwrap_err();
        assert!(e.to_string().starts_with("query is too complex: with its fragments expanded it holds more than"), "{e}");
    }

    #[test]
    fn cycles_are_refused_and_long_chains_do_not_recurse() {
        let e = cost("{ me { ...A } } fragment A on User { ...B } fragment B on User { ...A email }", 1000).unwrap_err();
        assert!(matches!(e, CostError::FragmentCycle { .. }), "{e:?}");
        let e = cost("{ me { ...A } } fragment A on User { ...A }", 1000).unwrap_err();
        assert_eq!(e, CostError::FragmentCycle { name: "A".into() });
        let mut chain = String::from("{ me { ...F0 } }");
        for i in 0..20_000 {
            chain.push_str(&format!(" fragment F{i} on User {{ ...F{} }}", i + 1));
        }
        chain.push_str(" fragment F20000 on User { email }");
        assert!(matches!(cost(&chain, 1_000_000), Ok(n) if n > 40_000));
    }

    #[test]
    fn unknown_fragments_cost_nothing_here() {
        assert_eq!(cost("{ me { ...Nowhere } }", 10).unwrap(), 2);
    }
}
