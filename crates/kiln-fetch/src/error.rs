/// Errors fetching a base; each names the base.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("base `{base}`: {message}")]
    Base { base: String, message: String },
}
