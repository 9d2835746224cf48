// Watches the running shop: every process's admin state (health, request rate, breakers,
// bulkheads, retries, relay and saga worker metrics) once a second, and the figures counted
// from the databases. The dashboard and the summary both read its snapshot; notable changes
// (a breaker opening, a saga compensating, a process dying) become live lines.
import { listSagas } from 'breakwater/saga'
import { countFigures, type Invariant, judge, type ShopFigures } from './invariants.js'
import type { BreakerTransition, OutboundState } from './lib/outbound.js'
import type { Load } from './load.js'
import type { ProxyRouteView } from './proxy.js'
import type { Shop } from './system.js'

/** A process as the dashboard shows it. */
export interface ProcessView {
  readonly name: string
  readonly kind: string
  readonly up: boolean
  readonly pid: number | undefined
  readonly rps: number
  readonly requests: number
  readonly errors: number
  readonly inFlight: number
  readonly restarts: number
  readonly chaos: Record<string, number> | undefined
}

/** A breaker (with its bulkhead and retry figures) between a caller and a downstream. */
export interface BreakerView {
  readonly owner: string
  readonly downstream: string
  readonly state: string
  readonly running: number
  readonly queued: number
  readonly retryBudget: number | undefined
  readonly retries: number
  /** Calls that failed for the caller; of them, failed fast by the breaker or bulkhead. */
  readonly failed: number
  readonly rejected: number | undefined
}

/** Everything the dashboard shows. */
export interface Snapshot {
  readonly at: number
  readonly elapsedMs: number
  readonly engines: { readonly db: string; readonly broker: string }
  readonly policiesIn: 'proxy' | 'in-process'
  readonly processes: readonly ProcessView[]
  readonly breakers: readonly BreakerView[]
  readonly transitions: readonly (BreakerTransition & { readonly owner: string })[]
  readonly relay: Record<string, unknown> | undefined
  readonly workers: Readonly<Record<string, Record<string, number>>>
  readonly readModelLag: { readonly positions: number; readonly ms: number } | undefined
  readonly strangler: {
    readonly newShare: number
    readonly bySystem: Readonly<Record<string, number>>
    readonly routes: readonly ProxyRouteView[]
  }
  readonly load: {
    readonly rate: number
    readonly sent: number
    readonly accepted: number
    readonly failed: number
    readonly shed: number
    readonly p50: number
    readonly p99: number
    /** New orders read back from the read model right after they were placed. */
    readonly readYourWrites: {
      readonly found: number
      readonly missed: number
      readonly missedBecause: Readonly<Record<string, number>>
    }
  }
  readonly figures: ShopFigures | undefined
  /**
   * Email messages whose acknowledgement chaos lost and that notifications has not handled
   * again since (undefined while notifications does not answer): the broker still owes their
   * redelivery, so the emails counted in `figures` are not final yet.
   */
  readonly awaitingRedelivery: number | undefined
  readonly invariants: readonly Invariant[]
  /** What each pattern did so far (counters kept across process restarts). */
  readonly patterns: PatternCounters
  readonly recentSagas: readonly {
    readonly id: string
    readonly status: string
    readonly step: string | undefined
    readonly reason: string | undefined
  }[]
  readonly log: readonly string[]
}

/** What the patterns did, summed over the processes (and over their restarts). */
export interface PatternCounters {
  /** Retries of outbound calls (by the proxy, or by the in-process clients). */
  readonly retries: number
  /** Of them, calls to payments: each sent again with the same Idempotency-Key. */
  readonly paymentRetries: number
  /** Times a breaker opened. */
  readonly breakerOpenings: number
  /** Saga instances a worker took over from a dead one (its lease expired). */
  readonly sagaTakeovers: number
  /** Events the relay published (again, after a kill, for the unmarked ones). */
  readonly eventsPublished: number
  /** Messages the notifications inbox recognised as redeliveries and skipped. */
  readonly redeliveriesAbsorbed: number
  /**
   * Retried orders (same Idempotency-Key) the strangler sent to the side that took their first
   * attempt, whatever the split said by then (the proxy's retry affinity).
   */
  readonly retriesKeptOnSide: number
  /** Faults injected: replies lost by chaos after the work was done (any service). */
  readonly repliesLost: number
  /** Faults injected: acknowledgements of email messages lost by chaos in notifications. */
  readonly acksLost: number
}

interface AdminState {
  pid: number
  rps: number
  requests: number
  errors: number
  inFlight: number
  repliesLost?: number
  chaos: Record<string, number>
  details?: {
    outbound?: OutboundState
    worker?: Record<string, number>
    readModelLag?: { positions: number; ms: number }
    [key: string]: unknown
  } & Record<string, unknown>
}

function percentile(values: readonly number[], p: number): number {
  if (values.length === 0) return 0
  const sorted = [...values].sort((a, b) => a - b)
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!
}

/** Options of {@link startMonitor}. */
export interface MonitorOptions {
  readonly shop: Shop
  readonly load: () => Load | undefined
  readonly newShare: () => number
  readonly startedAt: number
  /** Receives notable changes as lines. */
  readonly line: (text: string) => void
}

/** The running monitor. */
export interface Monitor {
  snapshot(): Snapshot
  /** Polls now (also what the timer does every second). */
  refresh(): Promise<Snapshot>
  /** Counts the figures from the databases now. */
  figures(): Promise<ShopFigures>
  stop(): Promise<void>
}

/** Starts polling the shop. */
export function startMonitor(options: MonitorOptions): Monitor {
  const { shop } = options
  const log: string[] = []
  const line = (text: string): void => {
    const stamped = `[${((Date.now() - options.startedAt) / 1000).toFixed(1).padStart(5)}s] ${text}`
    log.push(stamped)
    if (log.length > 80) log.shift()
    options.line(stamped)
  }
  const seenTransitions = new Set<string>()
  let transitionsToOpen = 0
  const lastUp = new Map<string, boolean>()
  const seenSagas = new Map<string, string>()
  const proxyBreakers = new Map<string, string>()
  const proxyTransitions: (BreakerTransition & { owner: string })[] = []
  let current: Snapshot | undefined
  let figures: ShopFigures | undefined
  // A restarted process starts its counters at zero: keep what its predecessors counted.
  const counters = new Map<string, { pid: number; last: number; base: number }>()
  const cumulative = (key: string, pid: number, value: number): number => {
    const c = counters.get(key) ?? { pid, last: 0, base: 0 }
    if (c.pid !== pid) {
      c.base += c.last
      c.pid = pid
    }
    c.last = value
    counters.set(key, c)
    return c.base + c.last
  }

  const poll = async (): Promise<Snapshot> => {
    const states = new Map<string, AdminState>()
    await Promise.all(
      [...shop.processes.values()].map(async (p) => {
        if (!p.up) return
        try {
          const response = await fetch(`${p.url}/_admin/state`, {
            signal: AbortSignal.timeout(2_000),
          })
          states.set(p.name, (await response.json()) as AdminState)
        } catch {
          // A process that does not answer in time shows as not ready this round.
        }
      }),
    )
    const processes: ProcessView[] = [...shop.processes.values()].map((p) => {
      const s = states.get(p.name)
      const up = p.up && s !== undefined
      if (lastUp.has(p.name) && lastUp.get(p.name) !== up)
        line(`${p.name} is ${up ? 'up' : 'DOWN'}`)
      lastUp.set(p.name, up)
      return {
        name: p.name,
        kind: p.kind,
        up,
        pid: s?.pid,
        rps: s?.rps ?? 0,
        requests: s?.requests ?? 0,
        errors: s?.errors ?? 0,
        inFlight: s?.inFlight ?? 0,
        restarts: p.restarts,
        chaos: s?.chaos,
      }
    })

    const breakers: BreakerView[] = []
    const transitions: (BreakerTransition & { owner: string })[] = []
    if (shop.proxy !== undefined) {
      const counters = await shop.proxy.counters().catch(() => ({}) as Record<string, undefined>)
      for (const s of shop.proxy.services())
        breakers.push({
          owner: 'proxy',
          downstream: s.name,
          state: s.breaker,
          running: s.running,
          queued: s.queued,
          retryBudget: s.retryBudgetLeft,
          retries: counters[s.name]?.retries ?? 0,
          failed: counters[s.name]?.failed ?? 0,
          rejected: undefined,
        })
    }
    for (const [owner, s] of states) {
      const outbound = s.details?.outbound
      if (outbound === undefined || outbound.via === 'proxy') continue
      for (const [downstream, d] of Object.entries(outbound.downstreams))
        breakers.push({
          owner,
          downstream,
          state: d.breaker,
          running: d.running,
          queued: d.queued,
          retryBudget: d.retryBudget,
          retries: d.retries,
          failed: d.failures,
          rejected: d.rejected,
        })
      for (const t of outbound.transitions) {
        transitions.push({ ...t, owner })
        const key = `${owner}:${t.downstream}:${t.at}:${t.to}`
        if (!seenTransitions.has(key)) {
          seenTransitions.add(key)
          if (t.to === 'open') transitionsToOpen++
          line(`breaker ${owner} -> ${t.downstream}: ${t.from} -> ${t.to}`)
        }
      }
    }
    // Breakers in the proxy: report their changes the same way.
    for (const b of breakers) {
      if (b.owner !== 'proxy') continue
      const before = proxyBreakers.get(b.downstream)
      if (before !== undefined && before !== b.state) {
        proxyTransitions.push({
          at: Date.now(),
          owner: 'proxy',
          downstream: b.downstream,
          from: before as BreakerTransition['from'],
          to: b.state as BreakerTransition['to'],
        })
        if (proxyTransitions.length > 30) proxyTransitions.shift()
        if (b.state === 'open') transitionsToOpen++
        line(`breaker proxy -> ${b.downstream}: ${before} -> ${b.state}`)
      }
      proxyBreakers.set(b.downstream, b.state)
    }
    transitions.push(...proxyTransitions)
    transitions.sort((a, b) => a.at - b.at)

    const workers: Record<string, Record<string, number>> = {}
    for (const [name, s] of states) if (s.details?.worker) workers[name] = s.details.worker
    const relayState = states.get('relay')?.details as Record<string, unknown> | undefined

    let recentSagas: Snapshot['recentSagas'] = []
    try {
      const recent = await listSagas(shop.dbs.orders, { limit: 12 })
      recentSagas = recent.map((s) => ({
        id: s.id,
        status: s.status,
        step: s.step,
        reason: s.reason,
      }))
      for (const s of recent) {
        const before = seenSagas.get(s.id)
        if (before !== s.status && (s.status === 'compensated' || s.status === 'failed'))
          line(`saga ${s.id} ${s.status}: ${(s.reason ?? '').slice(0, 70)}`)
        seenSagas.set(s.id, s.status)
      }
    } catch {
      // SQLite busy for a moment: next round.
    }

    for (const [name, s] of states) {
      if (s.details?.worker) cumulative(`${name}:recovered`, s.pid, s.details.worker.recovered ?? 0)
      for (const [downstream, d] of Object.entries(s.details?.outbound?.downstreams ?? {}))
        cumulative(`${name}:${downstream}:retries`, s.pid, d.retries)
      if (name === 'relay') cumulative('relay:published', s.pid, Number(s.details?.published ?? 0))
      cumulative(`${name}:repliesLost`, s.pid, s.repliesLost ?? 0)
      if (name === 'notifications') {
        cumulative(
          'notifications:redeliveries',
          s.pid,
          Number(s.details?.redeliveriesAbsorbed ?? 0),
        )
        cumulative('notifications:acksLost', s.pid, Number(s.details?.acksLost ?? 0))
      }
    }
    // Summed over every process that ever reported, also the ones down right now.
    const total = (suffix: string): number => {
      let sum = 0
      for (const [key, c] of counters) if (key.endsWith(suffix)) sum += c.base + c.last
      return sum
    }
    const patterns: PatternCounters = {
      retries:
        total(':retries') +
        breakers.reduce((sum, b) => sum + (b.owner === 'proxy' ? b.retries : 0), 0),
      paymentRetries:
        total(':payments:retries') +
        breakers.reduce(
          (sum, b) => sum + (b.owner === 'proxy' && b.downstream === 'payments' ? b.retries : 0),
          0,
        ),
      breakerOpenings: transitionsToOpen,
      sagaTakeovers: total(':recovered'),
      eventsPublished: total('relay:published'),
      redeliveriesAbsorbed: total('notifications:redeliveries'),
      retriesKeptOnSide: (shop.proxy?.routes() ?? []).reduce(
        (sum, r) => sum + (r.retryAffinity?.repeatsFollowed ?? 0),
        0,
      ),
      repliesLost: total(':repliesLost'),
      acksLost: total('notifications:acksLost'),
    }
    const notifications = states.get('notifications')

    const load = options.load()
    const accepted = load?.stats.accepted
    current = {
      at: Date.now(),
      elapsedMs: Date.now() - options.startedAt,
      engines: shop.engines,
      policiesIn: shop.proxy === undefined ? 'in-process' : 'proxy',
      processes,
      breakers,
      transitions: transitions.slice(-20),
      relay: relayState,
      workers,
      readModelLag: states.get('orders')?.details?.readModelLag,
      strangler: {
        newShare: options.newShare(),
        bySystem: load?.stats.bySystem ?? {},
        routes: shop.proxy?.routes() ?? [],
      },
      load: {
        rate: load?.rate() ?? 0,
        sent: load?.stats.sent ?? 0,
        accepted: accepted ?? 0,
        failed: load?.stats.failed ?? 0,
        shed: load?.stats.shed ?? 0,
        p50: percentile(load?.stats.latencies ?? [], 50),
        p99: percentile(load?.stats.latencies ?? [], 99),
        readYourWrites: {
          ...(load?.stats.readYourWrites ?? { found: 0, missed: 0, missedBecause: {} }),
        },
      },
      figures,
      awaitingRedelivery:
        notifications === undefined
          ? undefined
          : Number(notifications.details?.awaitingRedelivery ?? 0),
      invariants: figures === undefined ? [] : judge(figures, false),
      patterns,
      recentSagas,
      log: [...log],
    }
    return current
  }

  let countingFigures = false
  const countNow = async (): Promise<ShopFigures> => {
    figures = await countFigures(shop.dbs, options.load()?.stats.acceptedIds)
    return figures
  }

  let stopped = false
  let polling: Promise<unknown> = Promise.resolve()
  let pollRunning = false
  const timer = setInterval(() => {
    if (stopped) return
    // A slow round (a loaded machine) is not overtaken by the next one.
    if (!pollRunning) {
      pollRunning = true
      polling = poll()
        .catch(() => {})
        .finally(() => {
          pollRunning = false
        })
    }
    if (!countingFigures) {
      countingFigures = true
      void countNow()
        .catch(() => {})
        .finally(() => {
          countingFigures = false
        })
    }
  }, 1_000)

  return {
    snapshot: () => {
      if (current === undefined) throw new Error('the monitor has not polled yet')
      return current
    },
    refresh: poll,
    figures: countNow,
    stop: async () => {
      stopped = true
      clearInterval(timer)
      await polling
    },
  }
}
