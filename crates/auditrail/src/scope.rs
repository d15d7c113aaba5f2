//! Whose events a reader of the admin API may see.
//!
//! The admin API's authentication decides who is calling and inserts a
//! [`ReadScope`] into the request's extensions; the read handlers
//! (`/v1/events`, `/v1/dead-letters`) apply it to whatever the request asked
//! for. A request without one reads as [`ReadScope::All`]: that is an admin
//! API without authentication (loopback only).

/// What the caller of a read endpoint may see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadScope {
    /// Every tenant's events and dead letters (the operator).
    All,
    /// Only this tenant's.
    Tenant(String),
}

/// The tenants a read covers once its scope is applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tenants {
    /// No tenant filter.
    All,
    /// Only this tenant's events.
    Only(String),
    /// None: a tenant asked for another tenant's events. The answer is
    /// empty, not an error, so it says nothing about what exists.
    Nothing,
}

impl ReadScope {
    /// The scope of a request: its extension, or [`ReadScope::All`].
    pub fn of(extension: Option<axum::Extension<ReadScope>>) -> ReadScope {
        extension.map_or(ReadScope::All, |axum::Extension(scope)| scope)
    }

    /// What a read that asked for `asked` (a tenant filter, or none) may see.
    pub fn restrict(&self, asked: Option<String>) -> Tenants {
        match (self, asked) {
            (ReadScope::All, None) => Tenants::All,
            (ReadScope::All, Some(asked)) => Tenants::Only(asked),
            (ReadScope::Tenant(own), None) => Tenants::Only(own.clone()),
            (ReadScope::Tenant(own), Some(asked)) if asked == *own => Tenants::Only(asked),
            (ReadScope::Tenant(_), Some(_)) => Tenants::Nothing,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tenant_reads_its_own_events_whatever_it_asks() {
        let acme = ReadScope::Tenant("acme".into());
        assert_eq!(acme.restrict(None), Tenants::Only("acme".into()));
        assert_eq!(
            acme.restrict(Some("acme".into())),
            Tenants::Only("acme".into())
        );
        assert_eq!(acme.restrict(Some("globex".into())), Tenants::Nothing);
        assert_eq!(acme.restrict(Some(String::new())), Tenants::Nothing);
        assert_eq!(ReadScope::All.restrict(None), Tenants::All);
        assert_eq!(
            ReadScope::All.restrict(Some("globex".into())),
            Tenants::Only("globex".into())
        );
        assert_eq!(ReadScope::of(None), ReadScope::All);
    }
}
