"""Training: the sources of batches (online, in memory, from a bank), the loop
(AdamW, warm-up, plateau decay, early stopping) and data-parallel ranks."""
