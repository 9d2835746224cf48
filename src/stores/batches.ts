// Retention jobs (outbox and inbox pruning, the SQL queue's, the idempotency sweeper, saga
// pruning) all remove old rows the same way: in short batches, so that writers never wait long
// behind them, until a batch comes back short or the call's batch budget is spent.

/**
 * Runs `removeBatch` (which removes at most `batchSize` rows and resolves to how many it
 * removed) until one removes fewer than `batchSize` (nothing that old is left, or what is left
 * is locked by someone else right now) or `maxBatches` have run; resolves to the total. The
 * event loop turns between batches (see below), not after the last one.
 */
export async function removeInBatches(
  batchSize: number,
  maxBatches: number,
  removeBatch: () => Promise<number>,
): Promise<number> {
  let total = 0
  for (let batch = 0; batch < maxBatches; batch++) {
    // On SQLite a statement resolves at once, so without this turn a whole sweep would run as
    // one chain of microtasks: the write lock would be free between batches, but nothing else
    // (a request's claim, a timer) could run until the sweep ends.
    if (batch > 0) await yieldToEventLoop()
    const removed = await removeBatch()
    total += removed
    if (removed < batchSize) break
  }
  return total
}

/**
 * Lets the event loop turn once (timers, I/O, other requests), for loops of batches: on SQLite
 * a statement resolves at once, so a loop that only awaits statements never gives the loop a
 * turn. Not a timer: a test clock has nothing to drive here.
 */
export function yieldToEventLoop(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve))
}
