//! In-guest quiesce agent and host client. Not built yet: issue 7 fills this crate.
