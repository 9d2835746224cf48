// Retention jobs (outbox and inbox pruning, the SQL queue's, the idempotency sweeper, saga
// pruning) all remove old rows the same way: in short batches, so that writers never wait long
// behind them, until a batch comes back short or the call's batch budget is spent.

/**
 * Runs `removeBatch` (which removes at most `batchSize` rows and resolves to how many it
 * removed) until one removes fewer than `batchSize` (nothing that old is left, or what is left
 * is locked by someone else right now) or `maxBatches` have run; resolves to the total.
 */
export async function removeInBatches(
  batchSize: number,
  maxBatches: number,
  removeBatch: () => Promise<number>,
): Promise<number> {
  let total = 0
  for (let batch = 0; batch < maxBatches; batch++) {
    const removed = await removeBatch()
    total += removed
    if (removed < batchSize) break
  }
  return total
}
