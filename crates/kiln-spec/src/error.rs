use crate::ast::Pos;
use std::fmt;

/// A spec error: what is wrong, where, and (for misspelt names) a suggestion.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct SpecError {
    /// Where the offending form or atom starts.
    pub pos: Pos,
    /// What is wrong, e.g. "unknown directive `rnu`".
    pub message: String,
    /// A close known name, rendered as "did you mean `run`?".
    pub suggestion: Option<String>,
    /// The file name, when known; set by the caller with [`SpecError::in_file`].
    pub file: Option<String>,
}

impl SpecError {
    pub fn new(pos: Pos, message: impl Into<String>) -> Self {
        SpecError {
            pos,
            message: message.into(),
            suggestion: None,
            file: None,
        }
    }

    pub fn with_suggestion(mut self, suggestion: Option<String>) -> Self {
        self.suggestion = suggestion;
        self
    }

    /// Names the file the spec came from, so the error reads `FILE:LINE:COL: …`.
    pub fn in_file(mut self, file: impl Into<String>) -> Self {
        self.file = Some(file.into());
        self
    }
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(file) = &self.file {
            write!(f, "{file}:")?;
        }
        write!(f, "{}: {}", self.pos, self.message)?;
        if let Some(s) = &self.suggestion {
            write!(f, " (did you mean `{s}`?)")?;
        }
        Ok(())
    }
}
