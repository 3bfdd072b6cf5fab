//! The vif backend engine.
