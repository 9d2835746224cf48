import fc from 'fast-check'
import { describe, expect, it } from 'vitest'
import {
  type BreakerWindowOptions,
  BreakwaterError,
  type CircuitBreaker,
  type CircuitBreakerEvent,
  type CircuitState,
  circuitBreaker,
} from '../../src/index.js'
import { ManualClock } from '../../src/testing/index.js'

// A model-based test: random command sequences run against the real breaker and against a
// small reference model of the state machine written independently below; after every command
// the states must agree, every rejection must match the model's code and retryAfterMs, and
// every finished call must be reported as the model recorded it (a stale one as ignored).
// Starting and finishing a call are separate commands, so several calls are in flight at once
// and half-open admission (probe slots, stale outcomes) is really exercised.

interface Config {
  readonly window: BreakerWindowOptions
  readonly cooldownMs: number
  readonly cooldownMultiplier: number
  readonly maxCooldownMs: number
  readonly halfOpenProbes: number
  readonly slowCallMs: number | undefined
}

type Outcome = 'success' | 'failure' | 'permanent'

interface ModelCall {
  readonly id: number
  readonly epoch: number
  readonly startMs: number
}

// The reference model: keeps every recorded outcome and recomputes the window from scratch.
class Model {
  readonly config: Config
  state: CircuitState = 'closed'
  epoch = 0
  now: number
  records: Array<{ atMs: number; failure: boolean }> = []
  cooldownMs: number
  openUntilMs = 0
  probes = 0
  probeSuccesses = 0
  pending: ModelCall[] = []
  nextId = 0

  constructor(config: Config, startMs: number) {
    this.config = config
    this.now = startMs
    this.cooldownMs = config.cooldownMs
  }

  trips(): boolean {
    const w = this.config.window
    if (w.kind === 'consecutive') {
      let trailing = 0
      for (let i = this.records.length - 1; i >= 0 && this.records[i]!.failure; i--) trailing++
      return trailing >= (w.failures ?? 5)
    }
    let counted: Array<{ failure: boolean }>
    if (w.kind === 'count') {
      counted = this.records.slice(-(w.size ?? 100))
    } else {
      const bucketMs = (w.durationMs ?? 60_000) / (w.buckets ?? 10)
      const current = Math.floor(this.now / bucketMs)
      counted = this.records.filter(
        (r) => Math.floor(r.atMs / bucketMs) > current - (w.buckets ?? 10),
      )
    }
    const failures = counted.filter((r) => r.failure).length
    const minimumCalls = w.minimumCalls ?? (w.kind === 'count' ? (w.size ?? 100) : 20)
    return (
      counted.length >= minimumCalls && failures / counted.length >= (w.failureRateThreshold ?? 0.5)
    )
  }

  moveTo(to: CircuitState): void {
    const from = this.state
    this.state = to
    this.epoch++
    if (to === 'open') {
      this.cooldownMs =
        from === 'half-open'
          ? Math.min(this.cooldownMs * this.config.cooldownMultiplier, this.config.maxCooldownMs)
          : this.config.cooldownMs
      this.openUntilMs = this.now + this.cooldownMs
    } else if (to === 'half-open') {
      this.probes = 0
      this.probeSuccesses = 0
    } else if (to === 'closed') {
      this.records = []
      this.cooldownMs = this.config.cooldownMs
    }
  }
}

interface Real {
  readonly breaker: CircuitBreaker
  readonly clock: ManualClock
  readonly calls: Map<number, { settle: (outcome: Outcome) => void; done: Promise<unknown> }>
  readonly events: CircuitBreakerEvent[]
}

// How often the interesting situations came up, to show the property is not vacuous.
const seen = { halfOpenBusy: 0, probeClosed: 0, probeReopened: 0, staleIgnored: 0 }

class StartCall implements fc.AsyncCommand<Model, Real> {
  check(): boolean {
    return true
  }

  async run(m: Model, r: Real): Promise<void> {
    // What the model expects.
    let admitted = false
    let code: string | undefined
    let retryAfterMs = 0
    if (m.state === 'closed') admitted = true
    else if (m.state === 'half-open' && m.probes < m.config.halfOpenProbes) {
      admitted = true
      m.probes++
    } else if (m.state === 'isolated') code = 'ISOLATED_CIRCUIT'
    else {
      code = 'BROKEN_CIRCUIT'
      retryAfterMs = m.state === 'open' ? m.openUntilMs - m.now : 0
      if (m.state === 'half-open') seen.halfOpenBusy++
    }

    let settle: ((outcome: Outcome) => void) | undefined
    const done = r.breaker.execute(
      () =>
        new Promise((resolve, reject) => {
          settle = (outcome) => {
            if (outcome === 'success') resolve('ok')
            else if (outcome === 'failure') reject(new Error('downstream failed'))
            else reject(Object.assign(new Error('bad request'), { status: 400 }))
          }
        }),
    )
    // The breaker decides admission synchronously: fn has run by now, or never will.
    expect(settle !== undefined).toBe(admitted)
    if (settle === undefined) {
      const error = await done.catch((e: unknown) => e)
      expect(BreakwaterError.is(error) && error.code).toBe(code)
      if (code === 'BROKEN_CIRCUIT') expect(error).toMatchObject({ retryAfterMs })
      return
    }
    const id = m.nextId++
    m.pending.push({ id, epoch: m.epoch, startMs: m.now })
    r.calls.set(id, { settle, done: done.catch(() => undefined) })
  }

  toString(): string {
    return 'StartCall'
  }
}

class FinishCall implements fc.AsyncCommand<Model, Real> {
  constructor(
    readonly pick: number,
    readonly outcome: Outcome,
  ) {}

  check(m: Readonly<Model>): boolean {
    return m.pending.length > 0
  }

  async run(m: Model, r: Real): Promise<void> {
    const [call] = m.pending.splice(this.pick % m.pending.length, 1)
    const slow = m.config.slowCallMs !== undefined && m.now - call!.startMs >= m.config.slowCallMs
    const failed = this.outcome === 'failure' || slow
    const stale = call!.epoch !== m.epoch
    // The event reports what the breaker recorded: nothing for a stale call.
    const expected = stale
      ? { type: 'ignored', stale: true }
      : this.outcome === 'failure'
        ? { type: 'failure', reason: 'error' }
        : slow
          ? { type: 'failure', reason: 'slow' }
          : { type: 'success' }
    if (stale) seen.staleIgnored++
    else if (m.state === 'closed') {
      m.records.push({ atMs: m.now, failure: failed })
      if (m.trips()) m.moveTo('open')
    } else if (m.state === 'half-open') {
      if (failed) {
        seen.probeReopened++
        m.moveTo('open')
      } else if (++m.probeSuccesses >= m.config.halfOpenProbes) {
        seen.probeClosed++
        m.moveTo('closed')
      }
    }

    const real = r.calls.get(call!.id)!
    r.calls.delete(call!.id)
    const from = r.events.length
    real.settle(this.outcome)
    // The breaker has done its bookkeeping by the time the caller's promise settles.
    await real.done
    expect(r.breaker.state).toBe(m.state)
    const reported = r.events.slice(from).filter((e) => e.type !== 'stateChange')
    expect(reported).toHaveLength(1)
    expect(reported[0]).toMatchObject(expected)
    if (!stale) expect(reported[0]).not.toHaveProperty('stale')
  }

  toString(): string {
    return `FinishCall(${this.pick}, ${this.outcome})`
  }
}

class AdvanceTime implements fc.AsyncCommand<Model, Real> {
  constructor(readonly ms: number) {}

  check(): boolean {
    return true
  }

  async run(m: Model, r: Real): Promise<void> {
    m.now += this.ms
    if (m.state === 'open' && m.now >= m.openUntilMs) m.moveTo('half-open')
    await r.clock.advance(this.ms)
    expect(r.breaker.state).toBe(m.state)
  }

  toString(): string {
    return `AdvanceTime(${this.ms})`
  }
}

class Isolate implements fc.AsyncCommand<Model, Real> {
  check(): boolean {
    return true
  }

  async run(m: Model, r: Real): Promise<void> {
    if (m.state !== 'isolated') m.moveTo('isolated')
    r.breaker.isolate()
    expect(r.breaker.state).toBe(m.state)
  }

  toString(): string {
    return 'Isolate'
  }
}

class Reset implements fc.AsyncCommand<Model, Real> {
  check(): boolean {
    return true
  }

  async run(m: Model, r: Real): Promise<void> {
    m.moveTo('closed')
    r.breaker.reset()
    expect(r.breaker.state).toBe(m.state)
  }

  toString(): string {
    return 'Reset'
  }
}

const windowArb: fc.Arbitrary<BreakerWindowOptions> = fc.oneof(
  fc.record({
    kind: fc.constant('consecutive' as const),
    failures: fc.integer({ min: 1, max: 4 }),
  }),
  fc.integer({ min: 1, max: 6 }).chain((size) =>
    fc.record({
      kind: fc.constant('count' as const),
      size: fc.constant(size),
      failureRateThreshold: fc.constantFrom(0.25, 0.5, 0.75, 1),
      minimumCalls: fc.integer({ min: 1, max: size }),
    }),
  ),
  fc.record({
    kind: fc.constant('time' as const),
    durationMs: fc.constantFrom(1_000, 3_000),
    buckets: fc.constantFrom(1, 3, 10),
    failureRateThreshold: fc.constantFrom(0.25, 0.5, 1),
    minimumCalls: fc.integer({ min: 1, max: 4 }),
  }),
)

const configArb: fc.Arbitrary<Config> = fc
  .record({
    window: windowArb,
    cooldownMs: fc.constantFrom(100, 1_000),
    cooldownMultiplier: fc.constantFrom(1, 1.5, 2),
    maxFactor: fc.constantFrom(1, 3, 10),
    halfOpenProbes: fc.integer({ min: 1, max: 3 }),
    slowCallMs: fc.option(fc.constantFrom(200, 800), { nil: undefined }),
  })
  .map(({ maxFactor, ...rest }) => ({ ...rest, maxCooldownMs: rest.cooldownMs * maxFactor }))

// One weighted arbitrary rather than a list of equally likely ones: isolate() and reset()
// wipe the state, so when frequent they keep the breaker from ever reaching half-open.
const commandsArb = fc.commands<Model, Real, false>(
  [
    fc.oneof(
      { weight: 10, arbitrary: fc.constant(new StartCall()) },
      {
        weight: 10,
        arbitrary: fc
          .tuple(fc.nat(), fc.constantFrom<Outcome>('success', 'failure', 'failure', 'permanent'))
          .map(([pick, outcome]) => new FinishCall(pick, outcome)),
      },
      {
        weight: 6,
        arbitrary: fc
          .oneof(fc.integer({ min: 0, max: 300 }), fc.integer({ min: 300, max: 5_000 }))
          .map((ms) => new AdvanceTime(ms)),
      },
      { weight: 1, arbitrary: fc.constant(new Isolate()) },
      { weight: 1, arbitrary: fc.constant(new Reset()) },
    ),
  ],
  { size: 'max', maxCommands: 150 },
)

describe('circuitBreaker against a reference model', () => {
  it('agrees with the model on state and rejections under any command sequence', async () => {
    await fc.assert(
      fc.asyncProperty(configArb, commandsArb, async (config, commands) => {
        const clock = new ManualClock(10_000)
        const { slowCallMs, ...rest } = config
        const breaker = circuitBreaker({
          ...rest,
          ...(slowCallMs === undefined ? {} : { slowCallMs }),
          clock,
        })
        const real: Real = { breaker, clock, calls: new Map(), events: [] }
        breaker.events.on((e) => real.events.push(e))
        try {
          await fc.asyncModelRun(() => ({ model: new Model(config, clock.now()), real }), commands)
        } finally {
          for (const call of real.calls.values()) call.settle('success')
          breaker.dispose()
        }
      }),
      { numRuns: 300 },
    )
    // Every situation the split start/finish commands exist for was reached.
    expect(seen.halfOpenBusy).toBeGreaterThan(0)
    expect(seen.probeClosed).toBeGreaterThan(0)
    expect(seen.probeReopened).toBeGreaterThan(0)
    expect(seen.staleIgnored).toBeGreaterThan(0)
  })
})
