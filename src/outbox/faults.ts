import { InvalidOptionError } from '../core/errors.js'

/**
 * The step boundaries of a relay round, where a {@link RelayFaults} hook runs:
 * - `before-claim`: before the relay reads (claims) the next batch of rows;
 * - `after-claim`: the batch is in hand, nothing of it published yet;
 * - `after-publish`: the broker confirmed the batch, which is not yet marked published;
 * - `after-mark`: the batch is marked published (committed).
 */
export type RelayFaultPoint = 'before-claim' | 'after-claim' | 'after-publish' | 'after-mark'

/** Every {@link RelayFaultPoint}, in the order a round passes them. */
export const relayFaultPoints: readonly RelayFaultPoint[] = [
  'before-claim',
  'after-claim',
  'after-publish',
  'after-mark',
]

/**
 * Called by the relay at each {@link RelayFaultPoint}. If it throws (or rejects), the relay
 * halts on the spot as if its process had died there: it writes nothing more (no mark, no
 * lease release), its timers stop, and its state becomes `crashed`. It may also wait (return
 * a promise) to hold the relay at that point.
 */
export type RelayFaults = (point: RelayFaultPoint) => void | Promise<void>

/**
 * A {@link RelayFaults} hook for crash tests of real processes, driven by an environment value
 * such as `BREAKWATER_CRASH_AT=relay:after-publish` (the relay's process is killed with
 * SIGKILL the first time it reaches that point) or `relay:after-publish:3` (the third time).
 * Returns undefined when the value is absent or names another area (e.g. `saga:...`), so it
 * can be passed straight to `createRelay({ faults })`.
 *
 * @example
 * ```ts
 * import { createRelay, crashAtFromEnv } from 'breakwater/outbox'
 * const faults = crashAtFromEnv(process.env.BREAKWATER_CRASH_AT)
 * const relay = createRelay({ db, publisher, ...(faults ? { faults } : {}) })
 * ```
 */
export function crashAtFromEnv(value: string | undefined): RelayFaults | undefined {
  if (value === undefined || value === '') return undefined
  const parts = value.split(':')
  if (parts[0] !== 'relay') return undefined
  const point = parts[1]
  if (!relayFaultPoints.includes(point as RelayFaultPoint) || parts.length > 3) {
    throw new InvalidOptionError(
      'BREAKWATER_CRASH_AT',
      `relay:<${relayFaultPoints.join('|')}>[:<n>]`,
      value,
    )
  }
  const nth = parts[2] === undefined ? 1 : Number(parts[2])
  if (!Number.isInteger(nth) || nth < 1)
    throw new InvalidOptionError('BREAKWATER_CRASH_AT', 'a count >= 1 after the point', value)
  let seen = 0
  return (reached) => {
    if (reached !== point || ++seen < nth) return
    // A real crash, not an exit: no finally blocks, no flushing, no lease release.
    process.kill(process.pid, 'SIGKILL')
  }
}
