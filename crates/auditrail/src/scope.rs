//! What a caller of the admin API may read.

/// The tenants whose events and dead letters a request may see; put in the
/// request's extensions by the admin API's auth, read by its handlers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadScope {
    /// Every tenant's: the operator (or anyone, where no credential is
    /// configured).
    All,
    /// Only this tenant's, whatever the query asks for.
    Tenant(String),
}
