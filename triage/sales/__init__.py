"""The sales side: leads, the review queue, the digest and alerts."""
