//! RTP session driver (placeholder until written).
