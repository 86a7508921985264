//! The radix-tree prefix cache (text -> token ids, logprobs, loss mask, worker affinity).
