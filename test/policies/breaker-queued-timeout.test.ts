// A per-try timeout inside a circuit breaker, a bulkhead inside the timeout (the recommended
// order, and the HTTP client's): a call can run out of its timeout while it still waits in the
// bulkhead's queue, having sent nothing. That says nothing about the downstream, so the breaker
// ignores it, as it ignores a full bulkhead; the caller still gets the timeout's TimeoutError.
// Counted, a deep local queue opened the circuit of a downstream that answered every request.
import { describe, expect, it } from 'vitest'
import {
  bulkhead,
  circuitBreaker,
  type PolicyFunction,
  pipeline,
  TimeoutError,
  timeout,
} from '../../src/index.js'
import { ManualClock } from '../../src/testing/index.js'

const settled = (p: Promise<unknown>): Promise<unknown> =>
  p.then(
    (value) => value,
    (error: unknown) => error,
  )

// Runs until released, or until its signal aborts (then rejects with the signal's reason).
function held(): { fn: PolicyFunction<string>; release: () => void } {
  let release = (): void => {}
  const fn: PolicyFunction<string> = ({ signal }) =>
    new Promise<string>((resolve, reject) => {
      release = () => resolve('done')
      signal.addEventListener('abort', () => reject(signal.reason), { once: true })
    })
  return { fn, release: () => release() }
}

describe('a timeout that runs out in the bulkhead queue, inside a breaker', () => {
  it('is not counted: the circuit stays closed, the callers get TimeoutError', async () => {
    const clock = new ManualClock()
    const breaker = circuitBreaker({ window: { kind: 'consecutive', failures: 2 }, clock })
    const slots = bulkhead({ maxConcurrent: 1, maxQueued: 5, clock })
    const policy = pipeline(breaker, timeout(100, { clock }), slots)
    // The call in flight times out too: one failure, which the downstream earned.
    const running = settled(policy.execute(held().fn))
    const queued = [1, 2, 3].map(() => settled(policy.execute(held().fn)))
    expect(slots.queued).toBe(3)
    await clock.advance(100)
    expect(await running).toBeInstanceOf(TimeoutError)
    for (const error of await Promise.all(queued)) expect(error).toBeInstanceOf(TimeoutError)
    expect(breaker.state).toBe('closed')
    // A second timeout of a call that was sent still opens it: the failures are counted.
    const sent = settled(policy.execute(held().fn))
    await clock.advance(100)
    expect(await sent).toBeInstanceOf(TimeoutError)
    expect(breaker.state).toBe('open')
  })

  it('frees a half-open probe that ran out in the queue instead of reopening the circuit', async () => {
    const clock = new ManualClock()
    const breaker = circuitBreaker({
      window: { kind: 'consecutive', failures: 1 },
      cooldownMs: 1_000,
      clock,
    })
    const slots = bulkhead({ maxConcurrent: 1, maxQueued: 5, clock })
    const policy = pipeline(breaker, timeout(100, { clock }), slots)
    await settled(
      policy.execute(async () => {
        throw new Error('downstream down')
      }),
    )
    expect(breaker.state).toBe('open')
    await clock.advance(1_000)
    // The bulkhead is busy with work of its own (outside the breaker): the probe queues.
    const occupant = held()
    const busy = settled(slots.execute(occupant.fn))
    const probe = settled(policy.execute(held().fn))
    expect(slots.queued).toBe(1)
    await clock.advance(100)
    expect(await probe).toBeInstanceOf(TimeoutError)
    expect(breaker.state).toBe('half-open')
    occupant.release()
    await busy
    // The probe's slot was given back: the next call is the probe, and it closes the circuit.
    expect(await policy.execute(async () => 'ok')).toBe('ok')
    expect(breaker.state).toBe('closed')
  })
})
