import { InvalidOptionError } from '../core/errors.js'

/**
 * The places in a saga worker where a {@link SagaFaults} hook runs:
 * - `after-claim`: instances claimed (leases taken), nothing run yet;
 * - `before-step`: the attempt is about to invoke the step's action (or send its command);
 * - `after-step-action`: the action returned (its remote effect happened) but its result is
 *   not yet recorded;
 * - `after-step-commit`: the step's result (and the move to the next step) is committed;
 * - `before-compensation`, `after-compensation-action`, `after-compensation-commit`: the same
 *   three places for a compensation.
 */
export type SagaFaultPoint =
  | 'after-claim'
  | 'before-step'
  | 'after-step-action'
  | 'after-step-commit'
  | 'before-compensation'
  | 'after-compensation-action'
  | 'after-compensation-commit'

/** Every {@link SagaFaultPoint}, in the order a saga passes them. */
export const sagaFaultPoints: readonly SagaFaultPoint[] = [
  'after-claim',
  'before-step',
  'after-step-action',
  'after-step-commit',
  'before-compensation',
  'after-compensation-action',
  'after-compensation-commit',
]

/** Where a fault point was reached. */
export interface SagaFaultSite {
  /** The saga instance (undefined at `after-claim` with several instances). */
  readonly sagaId: string | undefined
  /** The step, for the step and compensation points. */
  readonly step: string | undefined
}

/**
 * Called by the worker at each {@link SagaFaultPoint}. If it throws (or rejects), the worker
 * abandons the instance on the spot as if its process had died there: it writes nothing more
 * for it (no result, no lease release), so another worker resumes it after the lease expires.
 * It may also wait (return a promise) to hold the worker at that point.
 */
export type SagaFaults = (point: SagaFaultPoint, site: SagaFaultSite) => void | Promise<void>

/**
 * A {@link SagaFaults} hook for crash tests of real worker processes, driven by an environment
 * value: `saga:<point>` (the process SIGKILLs itself the first time it reaches the point),
 * `saga:<point>:<step>` (... at that step), and either with `:<n>` appended (the n-th time).
 * Returns undefined when the value is absent or names another area (`relay:...`).
 *
 * @example
 * ```ts
 * // BREAKWATER_CRASH_AT=saga:after-step-commit:charge
 * const faults = sagaCrashAtFromEnv(process.env.BREAKWATER_CRASH_AT)
 * const worker = createSagaWorker({ db, sagas: [orderSaga], ...(faults ? { faults } : {}) })
 * ```
 */
export function sagaCrashAtFromEnv(value: string | undefined): SagaFaults | undefined {
  if (value === undefined || value === '') return undefined
  const parts = value.split(':')
  if (parts[0] !== 'saga') return undefined
  const point = parts[1] as SagaFaultPoint
  const format = `saga:<${sagaFaultPoints.join('|')}>[:<step>][:<n>]`
  if (!sagaFaultPoints.includes(point) || parts.length > 4) {
    throw new InvalidOptionError('BREAKWATER_CRASH_AT', format, value)
  }
  let step: string | undefined
  let nthText: string | undefined
  if (parts.length === 4) {
    step = parts[2]
    nthText = parts[3]
  } else if (parts.length === 3) {
    if (/^\d+$/.test(parts[2]!)) nthText = parts[2]
    else step = parts[2]
  }
  const nth = nthText === undefined ? 1 : Number(nthText)
  if (!Number.isInteger(nth) || nth < 1 || step === '') {
    throw new InvalidOptionError('BREAKWATER_CRASH_AT', format, value)
  }
  let seen = 0
  return (reached, site) => {
    if (reached !== point || (step !== undefined && site.step !== step) || ++seen < nth) return
    // A real crash, not an exit: no finally blocks, no flushing, no lease release.
    process.kill(process.pid, 'SIGKILL')
  }
}
