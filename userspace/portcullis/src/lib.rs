//! portcullis daemon library.
