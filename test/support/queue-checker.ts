// A queue history checker in the style of Jepsen's total-queue checker: record every enqueue
// (its invocation and outcome) and every delivery, then judge the history.
//
// - lost: enqueued with outcome ok (committed), never delivered;
// - unexpected: delivered, but never enqueued or enqueued with outcome failed (rolled back);
// - duplicated: delivered more than once (allowed for at-least-once queues, but counted);
// - recovered: delivered although its enqueue's outcome was unknown (e.g. a COMMIT whose
//   connection dropped): it did commit after all;
// - order violations: per key, a message first delivered after a later message of the same key
//   was first delivered. A key's enqueues must be recorded in commit order (invoke the next one
//   of a key only after the previous one completed), which is what "order" means here.

/** How an enqueue ended. */
export type EnqueueOutcome = 'ok' | 'failed' | 'unknown'

/** One per-key order violation. */
export interface OrderViolation {
  readonly key: string
  /** The message first delivered too late. */
  readonly id: string
  /** A later message of the key that was first delivered before it. */
  readonly overtakenBy: string
}

/** The verdict on a history. */
export interface QueueCheckResult {
  /** Enqueues invoked. */
  readonly attempted: number
  /** Enqueues with outcome ok. */
  readonly committed: number
  /** Enqueues with outcome unknown (or still pending when checked). */
  readonly unknown: number
  /** Deliveries recorded (with duplicates). */
  readonly deliveries: number
  readonly lost: readonly string[]
  readonly unexpected: readonly string[]
  /** Ids delivered more than once, with their delivery counts. */
  readonly duplicated: ReadonlyMap<string, number>
  readonly recovered: readonly string[]
  readonly orderViolations: readonly OrderViolation[]
  /** No loss, nothing unexpected, no order violation. */
  readonly valid: boolean
}

interface Enqueue {
  readonly key: string
  readonly index: number
  outcome: EnqueueOutcome | 'pending'
}

/** Records a queue history and checks it; see the file comment. */
export class QueueChecker {
  readonly #enqueues = new Map<string, Enqueue>()
  readonly #nextIndex = new Map<string, number>()
  readonly #deliveries: Array<{ readonly id: string; readonly key: string | undefined }> = []

  /** Records that an enqueue of `id` (ordering key `key`) was invoked. */
  invoke(id: string, key: string): void {
    if (this.#enqueues.has(id)) throw new Error(`QueueChecker: ${id} invoked twice`)
    const index = this.#nextIndex.get(key) ?? 0
    this.#nextIndex.set(key, index + 1)
    this.#enqueues.set(id, { key, index, outcome: 'pending' })
  }

  /** Records how the enqueue of `id` ended. */
  complete(id: string, outcome: EnqueueOutcome): void {
    const enqueue = this.#enqueues.get(id)
    if (enqueue === undefined) throw new Error(`QueueChecker: ${id} completed but never invoked`)
    enqueue.outcome = outcome
  }

  /** Invocation and outcome at once. */
  enqueue(id: string, key: string, outcome: EnqueueOutcome): void {
    this.invoke(id, key)
    this.complete(id, outcome)
  }

  /** Records a delivery of `id` (as the consumer saw it). */
  deliver(id: string, key?: string): void {
    this.#deliveries.push({ id, key })
  }

  /** Judges the history recorded so far. */
  check(): QueueCheckResult {
    const counts = new Map<string, number>()
    for (const { id } of this.#deliveries) counts.set(id, (counts.get(id) ?? 0) + 1)

    const lost: string[] = []
    const recovered: string[] = []
    let committed = 0
    let unknown = 0
    for (const [id, enqueue] of this.#enqueues) {
      if (enqueue.outcome === 'ok') {
        committed++
        if (!counts.has(id)) lost.push(id)
      } else if (enqueue.outcome === 'unknown' || enqueue.outcome === 'pending') {
        unknown++
        if (counts.has(id)) recovered.push(id)
      }
    }
    const unexpected: string[] = []
    const duplicated = new Map<string, number>()
    for (const [id, count] of counts) {
      const enqueue = this.#enqueues.get(id)
      if (enqueue === undefined || enqueue.outcome === 'failed') unexpected.push(id)
      if (count > 1) duplicated.set(id, count)
    }

    // Per key, the first deliveries must follow the enqueue order.
    const orderViolations: OrderViolation[] = []
    const seen = new Set<string>()
    const highest = new Map<string, { index: number; id: string }>()
    for (const { id } of this.#deliveries) {
      if (seen.has(id)) continue
      seen.add(id)
      const enqueue = this.#enqueues.get(id)
      if (enqueue === undefined || enqueue.outcome === 'failed') continue
      const top = highest.get(enqueue.key)
      if (top !== undefined && top.index > enqueue.index) {
        orderViolations.push({ key: enqueue.key, id, overtakenBy: top.id })
      } else {
        highest.set(enqueue.key, { index: enqueue.index, id })
      }
    }

    return {
      attempted: this.#enqueues.size,
      committed,
      unknown,
      deliveries: this.#deliveries.length,
      lost,
      unexpected,
      duplicated,
      recovered,
      orderViolations,
      valid: lost.length === 0 && unexpected.length === 0 && orderViolations.length === 0,
    }
  }
}
