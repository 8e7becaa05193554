//! The embedded speech engines: they run on this machine and need no
//! account, so an agent that names no provider gets them.
//!
//! - [`pocketsphinx`]: speech to text with PocketSphinx 5 (PyPI
//!   `pocketsphinx==5.1.1`, whose wheel carries the en-US model) in a Python
//!   child process per call, with warm spares.
//! - [`flite`]: text to speech with Debian's `flite`, a child process per
//!   piece of text.
//!
//! Both are child processes (each module says why) and both are killed when
//! their stream is dropped. A missing interpreter, module or binary is a
//! [`crate::agent::providers::ProviderError`] that names it and how to
//! install it.
//!
//! Must not: pick which engine a call gets (that is
//! [`crate::agent::speech`]) or know about calls.

pub mod flite;
pub mod pocketsphinx;
