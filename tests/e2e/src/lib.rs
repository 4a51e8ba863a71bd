//! End-to-end suite; see tests/.
