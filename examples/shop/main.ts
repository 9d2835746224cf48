// `breakwater demo` (the shop): starts the system, the dashboard and the load, plays a chaos
// script, then stops the load, lets the system go quiet and judges the invariants from the
// databases. Exported for the CLI (src/cli/demo.ts) and the tests.
import { writeFileSync } from 'node:fs'
import { createInterface, type Interface } from 'node:readline'
import { sleep, systemClock } from 'breakwater'
import {
  applyChaos,
  type ChaosAction,
  calmEverything,
  chaosCommandHelp,
  chaosScripts,
  describeAction,
  parseChaosCommand,
  playChaosScript,
  watchFor,
} from './chaos.js'
import { type Dashboard, startDashboard } from './dashboard.js'
import { type Invariant, judgeAtStop, quiescent, type ShopFigures } from './invariants.js'
import { type Load, startLoad } from './load.js'
import { type Monitor, type PatternCounters, startMonitor } from './monitor.js'
import { type Shop, startShop } from './system.js'

/** Options of {@link runShopDemo}. */
export interface ShopDemoOptions {
  /** How long the load runs (s); 0 runs until SIGINT/SIGTERM. */
  readonly durationS: number
  /** The chaos script: `default` or `none`. */
  readonly chaos: string
  /** Orders per second. */
  readonly rate: number
  /** PostgreSQL URL for every store; SQLite files when absent. */
  readonly db?: string | undefined
  /** NATS, RabbitMQ or Redis URL; the SQL queue when absent. */
  readonly broker?: string | undefined
  /** Dashboard port (a busy one falls back to a free port; 0: any). */
  readonly port: number
  /** Share of /orders sent to the new service at start (0..100). */
  readonly newShare: number
  /** Run without the proxy (policies in-process in each service). */
  readonly noProxy: boolean
  /** Safety nets to switch off, to show the checker catches it. */
  readonly breaks: readonly string[]
  /** Longest wait for the system to go quiet after the load stops (s). */
  readonly quiesceS: number
  /** Write the final summary as JSON to this file. */
  readonly json?: string | undefined
  /** Print a live line per event. */
  readonly live: boolean
  /** Where lines go. */
  readonly write: (line: string) => void
}

/** What {@link runShopDemo} found. */
export interface ShopDemoResult {
  readonly ok: boolean
  readonly quiescent: boolean
  readonly figures: ShopFigures
  readonly invariants: readonly Invariant[]
  readonly load: {
    readonly sent: number
    readonly accepted: number
    readonly failed: number
    readonly readYourWrites: {
      readonly found: number
      readonly missed: number
      readonly missedBecause: Readonly<Record<string, number>>
    }
  }
  readonly engines: { readonly db: string; readonly broker: string }
  readonly policiesIn: string
  readonly shadow: { readonly compared: number; readonly mismatches: number } | undefined
  readonly breakerTransitions: number
  readonly restarts: number
  readonly patterns: PatternCounters
}

function table(rows: readonly (readonly string[])[]): string[] {
  const widths = rows[0]!.map((_, c) => Math.max(...rows.map((r) => r[c]!.length)))
  return rows.map((r) => `  ${r.map((cell, c) => cell.padEnd(widths[c]!)).join('   ')}`.trimEnd())
}

/** Runs the shop demo; resolves with the judged invariants (the CLI turns `ok` into the exit code). */
export async function runShopDemo(options: ShopDemoOptions): Promise<ShopDemoResult> {
  const { write } = options
  if (chaosScripts[options.chaos] === undefined)
    throw new Error(
      `unknown chaos script "${options.chaos}" (known: ${Object.keys(chaosScripts).join(', ')})`,
    )
  const startedAt = Date.now()
  let newShare = options.newShare
  let shop: Shop | undefined
  let monitor: Monitor | undefined
  let dashboard: Dashboard | undefined
  let load: Load | undefined
  let closeTerminal: () => void = () => {}
  // The first signal ends the load and lets the system settle before it is judged; a second
  // one (Ctrl-C twice) stops waiting for the settle, and the demo still stops every process
  // and removes its files; a third ends the process where it stands, killing its processes
  // and removing its files first. SIGHUP (the terminal closed, an ssh session dropped) counts
  // as one of them: its default action left nine processes and their files behind. The
  // handlers stay until the clean-up is over: without
  // them, a signal during it would end the process with both left behind.
  let abandon: () => void = () => {}
  const stopSignal = new AbortController()
  const hurry = new AbortController()
  let signals = 0
  // Each stop, by a signal or (the first only) by `why`, said in its line.
  const stopStep = (why?: string): void => {
    signals++
    if (signals === 1) {
      stopSignal.abort()
      write(
        `stopping: ${why === undefined ? '' : `${why}; `}the load ends, then the system settles (Ctrl-C again: stop without waiting)`,
      )
    } else if (signals === 2) {
      hurry.abort()
      write('stopping without waiting for the system to settle...')
    } else {
      abandon()
      write('stopped at once: every process killed, temporary files removed')
      process.exit(130)
    }
  }
  const onSignal = (): void => stopStep()
  // Before the first await: the CLI hands the signals it held while loading over to these in
  // the turn it calls this function (src/cli/demo.ts).
  process.on('SIGINT', onSignal)
  process.on('SIGTERM', onSignal)
  process.on('SIGHUP', onSignal)
  // Any other end of the process before the clean-up is over (the CLI exits 141 when the
  // reader of the output went away, `npm start | head`; 1 when it cannot be written): the
  // services would exit by themselves, their folder of SQLite files would stay. 'exit'
  // listeners run synchronously, as abandon does.
  const onExit = (): void => abandon()
  process.on('exit', onExit)
  // `npm start` stopped by SIGTERM (`timeout`, a supervisor): npm passes it on to the shell
  // running the script, which ends by it without passing it on, and the demo, re-parented,
  // ran on with nobody left to stop it. Run by an npm script (npm sets npm_lifecycle_event),
  // its parent gone, it stops as on a first signal; a demo started in the background on
  // purpose by a shell that then exits (`node ... demo &`) runs on. Node has no event for it,
  // and process.ppid is the parent at start: signal 0 asks whether that process still exists
  // (ESRCH: it does not; EPERM, a parent of another user, does). No parent to watch in a
  // container's PID 1 (ppid 0).
  const parentAtStart = process.env.npm_lifecycle_event === undefined ? 0 : process.ppid
  const parentGone = (): boolean => {
    try {
      process.kill(parentAtStart, 0)
      return false
    } catch (error) {
      return (error as NodeJS.ErrnoException).code === 'ESRCH'
    }
  }
  const parentWatch = setInterval(() => {
    if (parentAtStart <= 1 || !parentGone()) return
    clearInterval(parentWatch)
    if (signals === 0) stopStep('the process that started the demo is gone')
  }, 1_000).unref()
  try {
    write(
      `breakwater shop demo: starting 9 processes on ${options.db ? 'PostgreSQL' : 'SQLite'} + ${
        options.broker ? options.broker.split(':')[0] : 'the SQL queue'
      }...`,
    )
    shop = await startShop({
      db: options.db,
      broker: options.broker,
      breaks: options.breaks,
      newOrdersShare: newShare,
      noProxy: options.noProxy,
      log: (line) => write(`  ! ${line}`),
      // A third signal during the start must still kill what started and remove the folder.
      onAbandonable: (early) => {
        abandon = early
      },
    })
    abandon = shop.abandon
    const running = shop
    const setNewShare = (percent: number): void => {
      newShare = percent
      running.proxy?.setNewOrdersShare(percent)
    }
    const live = (line: string): void => {
      if (options.live) write(line)
    }
    monitor = startMonitor({
      shop,
      load: () => load,
      newShare: () => newShare,
      startedAt,
      line: live,
    })
    await monitor.refresh()
    const activeMonitor = monitor
    const chaos = async (action: ChaosAction): Promise<void> => {
      const at = ((Date.now() - startedAt) / 1000).toFixed(1).padStart(5)
      live(`[${at}s] chaos: ${describeAction(action)} (watch: ${watchFor(action)})`)
      await applyChaos({ shop: running, setNewShare }, action)
      await activeMonitor.refresh()
    }
    dashboard = await startDashboard({ shop, monitor, chaos, port: options.port })
    write(
      `dashboard: ${dashboard.url}${
        dashboard.busyPort === undefined ? '' : ` (port ${dashboard.busyPort} was busy)`
      }  (policies ${shop.proxy ? 'in the breakwater proxy' : 'in-process'}; ${
        options.durationS > 0 ? `${options.durationS} s of load` : 'Ctrl-C to stop'
      }, ${options.rate} orders/s, chaos: ${options.chaos})`,
    )

    // Chaos by hand: commands typed in the terminal (`down payments`, `weight 90`).
    let terminal: Interface | undefined
    if (process.stdin.isTTY) {
      terminal = createInterface({ input: process.stdin })
      write(
        `  type a chaos command and Enter (${chaosCommandHelp.replace('chaos commands: ', '')})`,
      )
      const names = [...running.processes.keys()]
      terminal.on('line', (text) => {
        if (text.trim() === '') return
        const action = parseChaosCommand(text, names)
        if (typeof action === 'string') write(`  ${action}`)
        else void chaos(action).catch((error: unknown) => write(`  chaos failed: ${String(error)}`))
      })
    }
    closeTerminal = () => terminal?.close()

    load = startLoad({
      rate: options.rate,
      gatewayUrl: shop.proxy?.gatewayUrl,
      direct: {
        legacy: shop.processes.get('legacy')!.url,
        orders: shop.processes.get('orders')!.url,
      },
      newShare: () => newShare,
    })

    // The chaos script, at fractions of the load's run. The load ends at the duration even
    // while a step still runs (an `up` waiting for its process); steps not started are skipped.
    const script = playChaosScript({
      clock: systemClock,
      script: chaosScripts[options.chaos] ?? [],
      durationMs: options.durationS * 1_000,
      stop: stopSignal.signal,
      apply: (action) =>
        chaos(action).catch((error: unknown) => live(`  chaos failed: ${String(error)}`)),
    })
    await script.ended

    // The end: no more orders, every process back up and calm (once the step in progress, if
    // any, is done: it could be restarting one), then wait for the system to settle (sagas
    // finished, outbox drained, every event in the inbox) before judging.
    await load.stop()
    live(
      `[${((Date.now() - startedAt) / 1000).toFixed(1).padStart(5)}s] load stops; every service back up and calm; waiting for the system to settle...`,
    )
    await script.stepsDone
    await calmEverything(shop)
    const settleBy = Date.now() + options.quiesceS * 1_000
    // Settled also means no redelivery still owed: an email message whose acknowledgement
    // chaos lost comes again, and only then do the emails counted show what it did.
    let figures = await monitor.figures()
    let snapshot = await monitor.refresh()
    const settledNow = (): boolean => quiescent(figures) && snapshot.awaitingRedelivery === 0
    while (!settledNow() && Date.now() < settleBy && !hurry.signal.aborted) {
      await sleep(systemClock, 500)
      figures = await monitor.figures()
      snapshot = await monitor.refresh()
    }
    const settled = settledNow()
    const verdict = judgeAtStop(figures, { settled, hurried: hurry.signal.aborted })
    const shadow = snapshot.strangler.routes.find((r) => r.shadow !== undefined)?.shadow
    const result: ShopDemoResult = {
      ok: verdict.ok,
      quiescent: settled,
      figures,
      invariants: verdict.invariants,
      load: {
        sent: load.stats.sent,
        accepted: load.stats.accepted,
        failed: load.stats.failed,
        readYourWrites: {
          ...load.stats.readYourWrites,
          missedBecause: { ...load.stats.readYourWrites.missedBecause },
        },
      },
      engines: shop.engines,
      policiesIn: snapshot.policiesIn,
      shadow:
        shadow === undefined
          ? undefined
          : { compared: shadow.compared, mismatches: shadow.mismatches },
      breakerTransitions: snapshot.transitions.length,
      restarts: snapshot.processes.reduce((sum, p) => sum + p.restarts, 0),
      patterns: snapshot.patterns,
    }
    printSummary(result, (Date.now() - startedAt) / 1000, verdict.line, write)
    if (options.json !== undefined) writeFileSync(options.json, JSON.stringify(result, null, 2))
    return result
  } finally {
    try {
      closeTerminal()
      await load?.stop().catch(() => {})
      await dashboard?.close()
      await monitor?.stop()
      await shop?.close()
    } finally {
      process.off('SIGINT', onSignal)
      process.off('SIGTERM', onSignal)
      process.off('SIGHUP', onSignal)
      process.off('exit', onExit)
      clearInterval(parentWatch)
    }
  }
}

function printSummary(
  r: ShopDemoResult,
  seconds: number,
  verdict: string,
  write: (line: string) => void,
): void {
  const f = r.figures
  write('')
  write(
    `Summary (${seconds.toFixed(0)} s, ${r.engines.db} + ${r.engines.broker}, policies ${r.policiesIn}):`,
  )
  for (const line of table([
    ['invariant (from the databases)', 'value', 'must be', ''],
    ...r.invariants.map((i) => [i.name, i.value, i.expected, i.ok ? 'ok' : 'BROKEN']),
  ]))
    write(line)
  write('')
  for (const line of table([
    ['figure', 'value'],
    ['orders placed (legacy / new)', `${f.orders.total} (${f.orders.legacy} / ${f.orders.new})`],
    // Every charge taken: orders charged twice show here as in "duplicate charges".
    ['paid orders / charges / refunds', `${f.paidOrders.total} / ${f.chargesTaken} / ${f.refunds}`],
    ['orders cancelled by compensation', String(f.cancelledOrders)],
    [
      'sagas completed / compensated / failed',
      `${f.sagas.completed ?? 0} / ${f.sagas.compensated ?? 0} / ${f.sagas.failed ?? 0}`,
    ],
    ['emails sent', String(f.emails.sent)],
    ['outbox events committed / delivered', `${f.events.committed} / ${f.events.delivered}`],
    ['load: sent / accepted / failed', `${r.load.sent} / ${r.load.accepted} / ${r.load.failed}`],
    ['processes killed and restarted (chaos)', String(r.restarts)],
    [
      'replies / email acknowledgements lost (chaos)',
      `${r.patterns.repliesLost} / ${r.patterns.acksLost}`,
    ],
    ['settled before the deadline', r.quiescent ? 'yes' : 'NO'],
  ]))
    write(line)
  write('')
  const p = r.patterns
  const shadow = r.shadow ? `${r.shadow.compared} / ${r.shadow.mismatches}` : 'proxy not running'
  for (const line of table([
    ['what the patterns did', ''],
    ['retries (full jitter, within the retry budget)', String(p.retries)],
    ['  of them payments calls, same Idempotency-Key', String(p.paymentRetries)],
    ['circuit breakers opened', `${p.breakerOpenings} (${r.breakerTransitions} transitions)`],
    ['sagas compensated (refund, release, cancel)', String(f.sagas.compensated ?? 0)],
    ['sagas taken over from a killed worker', String(p.sagaTakeovers)],
    ['outbox events published by the relay', String(p.eventsPublished)],
    [
      'read-your-writes: new orders read back found / not',
      `${r.load.readYourWrites.found} / ${r.load.readYourWrites.missed}`,
    ],
    ['redeliveries skipped by the inbox', String(p.redeliveriesAbsorbed)],
    ['strangler: retried orders kept on their first side', String(p.retriesKeptOnSide)],
    ['strangler shadow: compared / mismatches', shadow],
  ]))
    write(line)
  write('')
  write(verdict)
}
