//! The core's one error type, carrying a google.rpc canonical code and a message fit for a client.
//!
//! Adapters render it (REST: HTTP status + `{"error": ...}`; gRPC: status). Causes a client must not
//! see, like storage failures, are logged here and replaced by a generic message.

use ferrocore_model::Invalid;
use ferrocore_store::StoreError;

/// google.rpc.Code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    Cancelled = 1,
    Unknown = 2,
    InvalidArgument = 3,
    DeadlineExceeded = 4,
    NotFound = 5,
    AlreadyExists = 6,
    PermissionDenied = 7,
    ResourceExhausted = 8,
    FailedPrecondition = 9,
    Aborted = 10,
    OutOfRange = 11,
    Unimplemented = 12,
    Internal = 13,
    Unavailable = 14,
    DataLoss = 15,
    Unauthenticated = 16,
}

impl Code {
    pub const ALL: [Code; 16] = [
        Code::Cancelled,
        Code::Unknown,
        Code::InvalidArgument,
        Code::DeadlineExceeded,
        Code::NotFound,
        Code::AlreadyExists,
        Code::PermissionDenied,
        Code::ResourceExhausted,
        Code::FailedPrecondition,
        Code::Aborted,
        Code::OutOfRange,
        Code::Unimplemented,
        Code::Internal,
        Code::Unavailable,
        Code::DataLoss,
        Code::Unauthenticated,
    ];

    /// The code with this google.rpc number (none for 0, OK, or an unknown number).
    pub fn from_number(n: i32) -> Option<Code> {
        Code::ALL.into_iter().find(|c| *c as i32 == n)
    }

    pub fn name(self) -> &'static str {
        match self {
            Code::Cancelled => "CANCELLED",
            Code::Unknown => "UNKNOWN",
            Code::InvalidArgument => "INVALID_ARGUMENT",
            Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
            Code::NotFound => "NOT_FOUND",
            Code::AlreadyExists => "ALREADY_EXISTS",
            Code::PermissionDenied => "PERMISSION_DENIED",
            Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
            Code::FailedPrecondition => "FAILED_PRECONDITION",
            Code::Aborted => "ABORTED",
            Code::OutOfRange => "OUT_OF_RANGE",
            Code::Unimplemented => "UNIMPLEMENTED",
            Code::Internal => "INTERNAL",
            Code::Unavailable => "UNAVAILABLE",
            Code::DataLoss => "DATA_LOSS",
            Code::Unauthenticated => "UNAUTHENTICATED",
        }
    }

    /// The HTTP status Google's REST front end uses for this code.
    pub fn http_status(self) -> u16 {
        match self {
            Code::Cancelled => 499,
            Code::Unknown | Code::Internal | Code::DataLoss => 500,
            Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => 400,
            Code::DeadlineExceeded => 504,
            Code::NotFound => 404,
            Code::AlreadyExists | Code::Aborted => 409,
            Code::PermissionDenied => 403,
            Code::ResourceExhausted => 429,
            Code::Unimplemented => 501,
            Code::Unavailable => 503,
            Code::Unauthenticated => 401,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {message}", code.name())]
pub struct Error {
    pub code: Code,
    pub message: String,
    /// For INVALID_ARGUMENT: the offending field, reported as a BadRequest field violation.
    pub field: Option<String>,
}

impl Error {
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Self { code, message: message.into(), field: None }
    }

    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self { code: Code::InvalidArgument, message: message.into(), field: Some(field.into()) }
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(Code::NotFound, message)
    }

    pub fn failed_precondition(message: impl Into<String>) -> Self {
        Self::new(Code::FailedPrecondition, message)
    }
}

impl From<Invalid> for Error {
    fn from(e: Invalid) -> Self {
        Self::invalid(e.field, e.message)
    }
}

/// Storage failures become UNAVAILABLE (retryable by Google's clients) with a generic message; the
/// cause goes to the log. Callers map NotFound and AlreadyExists themselves where they mean something.
pub fn storage(e: StoreError) -> Error {
    match e {
        StoreError::Backend(cause) => {
            tracing::error!(%cause, "storage failure");
            Error::new(Code::Unavailable, "The service is temporarily unable to reach its storage; retry later.")
        }
        StoreError::NotFound => Error::not_found("The resource does not exist."),
        StoreError::AlreadyExists => Error::new(Code::AlreadyExists, "The resource already exists."),
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
