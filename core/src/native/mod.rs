//! Native driver (under construction).
