//! The vbd's xenbus handshake.
