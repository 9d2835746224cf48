// Chaos: the actions the dashboard's buttons and the CLI apply, and the scripted schedule of
// `--chaos default`, which walks through every failure the patterns are there for.
import { type Clock, sleep } from 'breakwater'
import type { ProcessName, Shop } from './system.js'

/** One chaos action. */
export type ChaosAction =
  | { readonly kind: 'slow'; readonly target: ProcessName; readonly latencyMs: number }
  | {
      readonly kind: 'fail'
      readonly target: ProcessName
      readonly errorRate?: number
      readonly resetRate?: number
      readonly lostReplyRate?: number
    }
  | { readonly kind: 'calm'; readonly target: ProcessName }
  | { readonly kind: 'down'; readonly target: ProcessName }
  | { readonly kind: 'up'; readonly target: ProcessName }
  | { readonly kind: 'weight'; readonly percent: number }
  | { readonly kind: 'rollback' }

/** A step of a chaos script: an action at a fraction of the run (0..1). */
export interface ChaosStep {
  readonly at: number
  readonly action: ChaosAction
}

/**
 * The default script: slow payments (timeouts, the bulkhead fills), a saga worker killed in
 * the middle of slow charges (the other takes its sagas over), failing payments with lost
 * replies (retries, idempotency), the relay killed (the outbox holds the events), the
 * inventory service down (its breaker opens, sagas wait and resume), notifications losing
 * acknowledgements and then killed (redelivery, the inbox), the strangler shifted to the new
 * service, shipping resetting connections, and a rollback.
 */
export const defaultChaos: readonly ChaosStep[] = [
  { at: 0.06, action: { kind: 'slow', target: 'payments', latencyMs: 800 } },
  { at: 0.12, action: { kind: 'down', target: 'saga-worker-1' } },
  { at: 0.18, action: { kind: 'fail', target: 'payments', errorRate: 0.3, lostReplyRate: 0.2 } },
  { at: 0.22, action: { kind: 'up', target: 'saga-worker-1' } },
  { at: 0.3, action: { kind: 'calm', target: 'payments' } },
  { at: 0.3, action: { kind: 'down', target: 'relay' } },
  { at: 0.37, action: { kind: 'up', target: 'relay' } },
  { at: 0.4, action: { kind: 'down', target: 'inventory' } },
  { at: 0.5, action: { kind: 'up', target: 'inventory' } },
  { at: 0.54, action: { kind: 'fail', target: 'notifications', lostReplyRate: 0.3 } },
  { at: 0.56, action: { kind: 'weight', percent: 90 } },
  { at: 0.62, action: { kind: 'down', target: 'notifications' } },
  { at: 0.68, action: { kind: 'up', target: 'notifications' } },
  { at: 0.72, action: { kind: 'fail', target: 'shipping', resetRate: 0.4 } },
  { at: 0.82, action: { kind: 'calm', target: 'shipping' } },
  { at: 0.88, action: { kind: 'rollback' } },
]

/**
 * For the whole run, payments loses half of its replies after charging and notifications half
 * of its acknowledgements after sending the email: every charge lost that way is retried with
 * the same Idempotency-Key, every such message delivered again. With the safety nets on,
 * nothing is charged or sent twice; with `--break payments-idempotency` or `--break inbox` the
 * checker finds the duplicates.
 */
export const lostRepliesChaos: readonly ChaosStep[] = [
  { at: 0, action: { kind: 'fail', target: 'payments', lostReplyRate: 0.5 } },
  { at: 0, action: { kind: 'fail', target: 'notifications', lostReplyRate: 0.5 } },
  { at: 0.9, action: { kind: 'calm', target: 'payments' } },
  { at: 0.9, action: { kind: 'calm', target: 'notifications' } },
]

/** The chaos scripts `--chaos` accepts. */
export const chaosScripts: Readonly<Record<string, readonly ChaosStep[]>> = {
  default: defaultChaos,
  'lost-replies': lostRepliesChaos,
  none: [],
}

/** Options of {@link playChaosScript}. */
export interface ChaosScriptOptions {
  readonly clock: Clock
  readonly script: readonly ChaosStep[]
  /** The run's length (ms), the load's; 0: until `stop`, and no step is played. */
  readonly durationMs: number
  /** Ends the run early (the first Ctrl-C). */
  readonly stop: AbortSignal
  /** Applies one action; it settles its own failures (a rejection ends the script). */
  readonly apply: (action: ChaosAction) => Promise<void>
}

/** A chaos script being played: see {@link playChaosScript}. */
export interface ChaosScriptRun {
  /** Resolves when the duration is over, or at once when stopped: the load stops then. */
  readonly ended: Promise<void>
  /** Resolves when no step runs any more: the one in progress at the end has finished. */
  readonly stepsDone: Promise<void>
}

/**
 * Plays a chaos script over a run: each step at its fraction of the duration. A step waits for
 * the one before it on the same process (or, for `weight` and `rollback`, the strangler) to be
 * done, so an `up` waiting for its process to be ready delays the next step on that process
 * only. The run ends at its duration whatever a step is doing, so the load stops on time; a
 * step that has not started by then is skipped. Before calming the system, wait for
 * {@link ChaosScriptRun.stepsDone}: a step still restarting a process would race the calm.
 */
export function playChaosScript(options: ChaosScriptOptions): ChaosScriptRun {
  const { clock, script, durationMs, stop } = options
  const startedAt = clock.now()
  // Aborted when the run ends, by its duration or by `stop`: no step starts after it.
  const over = new AbortController()
  const untilStopped = new Promise<void>((resolve) => {
    if (stop.aborted) resolve()
    else stop.addEventListener('abort', () => resolve(), { once: true })
  })
  const ended = (
    durationMs > 0 ? sleep(clock, durationMs, stop).catch(() => {}) : untilStopped
  ).then(() => over.abort())
  // The last step started or queued on each process (and on the strangler).
  const lastOn = new Map<string, Promise<void>>()
  const stepsDone = (async () => {
    for (const step of durationMs > 0 ? script : []) {
      if (step.at >= 1 || over.signal.aborted) break
      const wait = startedAt + step.at * durationMs - clock.now()
      // Rejects when the run ends first: the step is skipped.
      if (wait > 0) await sleep(clock, wait, over.signal).catch(() => {})
      if (over.signal.aborted) break
      const on = 'target' in step.action ? step.action.target : 'strangler'
      const before = lastOn.get(on) ?? Promise.resolve()
      lastOn.set(
        on,
        before.then(() => (over.signal.aborted ? undefined : options.apply(step.action))),
      )
    }
    await Promise.all(lastOn.values())
  })()
  return { ended, stepsDone }
}

/** The commands the demo reads from its terminal, for `help`. */
export const chaosCommandHelp =
  'chaos commands: slow <process> [ms] | fail <process> [rate] | resets <process> [rate] | ' +
  'lose <process> [rate] | down <process> | up <process> | calm <process> | weight <percent> | rollback'

// The terminal's verbs: the chaos action field each one's value sets, and its default.
const terminalVerbs = {
  slow: { kind: 'slow', field: 'latencyMs', default: 800 },
  fail: { kind: 'fail', field: 'errorRate', default: 0.5 },
  resets: { kind: 'fail', field: 'resetRate', default: 0.5 },
  lose: { kind: 'fail', field: 'lostReplyRate', default: 0.5 },
  down: { kind: 'down' },
  up: { kind: 'up' },
  calm: { kind: 'calm' },
} as const satisfies Record<string, { kind: string; field?: string; default?: number }>

// A number typed in the terminal: plain decimal digits, maybe signed, maybe with a fraction.
// Anything else (`abc`, `1e3`, `0x10`) stays text, which the action's rule then refuses by name.
function typedNumber(text: string): number | string {
  return /^-?\d+(\.\d+)?$/.test(text) ? Number(text) : text
}

/**
 * Parses a chaos command typed in the demo's terminal (`down payments`, `weight 90`); a string
 * is the message for a bad one. The words become the JSON action the dashboard's buttons post
 * and are checked by the same rule ({@link chaosActionOf}), so a value that is not one
 * (`slow payments abc`, a negative latency) is refused, naming it, never read as a default.
 */
export function parseChaosCommand(
  line: string,
  processes: readonly ProcessName[],
): ChaosAction | string {
  const words = line.trim().split(/\s+/)
  const verb = words[0] ?? ''
  const refused = (problem: string) => `${line.trim()}: ${problem}`
  let candidate: Record<string, unknown>
  let used: number
  if (verb === 'rollback') {
    candidate = { kind: 'rollback' }
    used = 1
  } else if (verb === 'weight') {
    candidate = {
      kind: 'weight',
      percent: words[1] === undefined ? undefined : typedNumber(words[1]),
    }
    used = 2
  } else if (Object.hasOwn(terminalVerbs, verb)) {
    const spec: { kind: string; field?: string; default?: number } =
      terminalVerbs[verb as keyof typeof terminalVerbs]
    candidate = { kind: spec.kind, target: words[1] }
    used = 2
    if (spec.field !== undefined) {
      const value = words[2]
      candidate[spec.field] = value === undefined ? spec.default : typedNumber(value)
      used = 3
    }
  } else return chaosCommandHelp
  if (words.length > used) return refused(`unexpected "${words[used]}" (${chaosCommandHelp})`)
  const action = chaosActionOf(candidate, processes)
  return typeof action === 'string' ? refused(action) : action
}

const targetedKinds = ['slow', 'fail', 'calm', 'down', 'up'] as const
const rateFields = ['errorRate', 'resetRate', 'lostReplyRate'] as const
/** The longest latency an action may add (a minute): longer only looks like a hang. */
export const maxChaosLatencyMs = 60_000

/** A value received, for a message: JSON (`"abc"`, `-5`), or `nothing`. */
function got(value: unknown): string {
  return value === undefined ? 'nothing' : (JSON.stringify(value) ?? String(value))
}

/**
 * Reads a chaos action sent as JSON (the dashboard's buttons post them to `/api/chaos`; the
 * terminal's commands are turned into one): the action with only the fields its kind has, or a
 * string that says what is wrong with it, naming the value received.
 */
export function chaosActionOf(
  value: unknown,
  processes: readonly ProcessName[],
): ChaosAction | string {
  if (typeof value !== 'object' || value === null || Array.isArray(value))
    return 'a chaos action is a JSON object with a "kind"'
  const fields = value as Record<string, unknown>
  const kind = fields.kind
  if (kind === 'rollback') return { kind }
  if (kind === 'weight') {
    const percent = fields.percent
    if (typeof percent !== 'number' || !Number.isInteger(percent) || percent < 0 || percent > 100)
      return `weight needs "percent", a whole number from 0 to 100, got ${got(percent)}`
    return { kind, percent }
  }
  if (!(targetedKinds as readonly unknown[]).includes(kind))
    return `unknown kind ${got(kind)} (known: ${[...targetedKinds, 'weight', 'rollback'].join(', ')})`
  const target = processes.find((p) => p === fields.target)
  if (target === undefined) return `unknown process ${got(fields.target)} (${processes.join(', ')})`
  switch (kind as (typeof targetedKinds)[number]) {
    case 'slow': {
      const latencyMs = fields.latencyMs
      if (
        typeof latencyMs !== 'number' ||
        !Number.isInteger(latencyMs) ||
        latencyMs < 0 ||
        latencyMs > maxChaosLatencyMs
      )
        return `slow needs "latencyMs", a whole number from 0 to ${maxChaosLatencyMs}, got ${got(latencyMs)}`
      return { kind: 'slow', target, latencyMs }
    }
    case 'fail': {
      const rates: { errorRate?: number; resetRate?: number; lostReplyRate?: number } = {}
      for (const field of rateFields) {
        const rate = fields[field]
        if (rate === undefined) continue
        if (typeof rate !== 'number' || !(rate >= 0 && rate <= 1))
          return `fail: "${field}" is a share from 0 to 1, got ${got(rate)}`
        rates[field] = rate
      }
      return { kind: 'fail', target, ...rates }
    }
    default:
      return { kind: kind as 'calm' | 'down' | 'up', target }
  }
}

/** A one-line description of an action, for the live lines. */
export function describeAction(action: ChaosAction): string {
  switch (action.kind) {
    case 'slow':
      return `${action.target} slow (+${action.latencyMs} ms per request)`
    case 'fail': {
      const parts = [
        action.errorRate ? `${Math.round(action.errorRate * 100)}% 503` : '',
        action.resetRate ? `${Math.round(action.resetRate * 100)}% resets` : '',
        action.lostReplyRate ? `${Math.round(action.lostReplyRate * 100)}% lost replies` : '',
      ].filter((p) => p !== '')
      return `${action.target} failing (${parts.join(', ')})`
    }
    case 'calm':
      return `${action.target} healthy again`
    case 'down':
      return `${action.target} killed (SIGKILL)`
    case 'up':
      return `${action.target} restarted`
    case 'weight':
      return `strangler: ${action.percent}% of /orders to the new service`
    case 'rollback':
      return 'strangler rollback: every order to legacy'
  }
}

/** What to watch after an action: the pattern that answers it. */
export function watchFor(action: ChaosAction): string {
  switch (action.kind) {
    case 'slow':
      return 'timeouts cut slow calls, the bulkhead caps calls in flight'
    case 'fail':
      if (action.target === 'notifications')
        return 'messages come again; the inbox recognises them and sends no second email'
      return action.lostReplyRate
        ? 'retries with jitter; the Idempotency-Key makes a retried charge a replay'
        : 'retries with jitter within the retry budget; the breaker opens if it keeps failing'
    case 'calm':
      return 'a half-open breaker lets a probe through and closes'
    case 'down':
      if (action.target === 'relay')
        return 'the outbox holds the events: lag grows, nothing is lost'
      if (action.target.startsWith('saga-worker'))
        return 'the other worker takes its sagas over after the lease'
      if (action.target === 'notifications')
        return 'the broker redelivers; the inbox sends each email once'
      return 'its breaker opens: callers fail fast; sagas retry later, then resume'
    case 'up':
      return action.target === 'relay'
        ? 'the new relay publishes the backlog'
        : 'traffic flows again'
    case 'weight':
      return 'sticky per customer: a customer stays on one side'
    case 'rollback':
      return 'immediate; requests in flight finish where they started'
  }
}

/** The controls the chaos actions drive. */
export interface ChaosControls {
  readonly shop: Shop
  setNewShare(percent: number): void
}

/** Applies one action. */
export async function applyChaos(controls: ChaosControls, action: ChaosAction): Promise<void> {
  const { shop } = controls
  switch (action.kind) {
    case 'slow':
      return shop.chaos(action.target, { latencyMs: action.latencyMs })
    case 'fail': {
      const { kind: _kind, target, ...rates } = action
      return shop.chaos(target, rates)
    }
    case 'calm':
      return shop.chaos(action.target, {})
    case 'down':
      return shop.kill(action.target)
    case 'up':
      return shop.restart(action.target)
    case 'weight':
      return controls.setNewShare(action.percent)
    case 'rollback':
      return controls.setNewShare(0)
  }
}

/** Undoes every chaos: all processes up and calm. The split stays where it is. */
export async function calmEverything(shop: Shop): Promise<void> {
  for (const process of shop.processes.values()) {
    if (!process.up) await shop.restart(process.name)
    await shop.chaos(process.name, {})
  }
}
