//! The modes: each plugs the core and a protocol into a way of running.

pub mod daemon;
pub mod milter;
pub mod proxy;
pub mod sendmail;
