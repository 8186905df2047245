//! Starting the daemon under test.
