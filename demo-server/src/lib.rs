//! Tidings reference server (under construction).
