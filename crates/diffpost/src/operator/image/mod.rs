//! Image operators on flattened `[B, C*H*W]` batches (see each file). Work in progress.
