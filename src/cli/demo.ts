// `breakwater demo`: the shop (examples/shop: a small system built on breakwater's public API,
// each service its own process, behind the breakwater proxy, with a live dashboard, load and
// chaos) by default; `breakwater demo policies` plays the resilience-policy scenarios.
import { accessSync, constants, statSync, writeFileSync } from 'node:fs'
import { connect } from 'node:net'
import { dirname, resolve } from 'node:path'
import {
  type PolicyScenarioName,
  policyScenarioNames,
  runPoliciesDemo,
} from '../demo/policies/index.js'
import { redactSecrets } from '../observability/index.js'
import type { SignalTarget } from '../process/index.js'
// The parser alone: the drivers load only when a database is opened.
import { parseDatabaseUrl } from '../stores/open.js'
import { type HeldSignals, holdSignals } from './held-signals.js'
import { oneLine, wantsHelp } from './usage.js'

/** The defaults of a plain `npm start`: 45 s of load at 5 orders/s with the default chaos. */
const shopDefaults = {
  durationS: 45,
  chaos: 'default',
  rate: 5,
  port: 4310,
  newShare: 50,
  quiesceS: 30,
} as const

const chaosScripts = ['default', 'lost-replies', 'none'] as const

const usage = `usage: breakwater demo [shop] [options]
       breakwater demo policies [--only <scenario>[,<scenario>...]]

shop (the default): a legacy monolith and the new services that strangle it (orders as a saga
with an event store and an outbox, inventory, payments with idempotency keys, shipping,
notifications behind an inbox), each its own process, the outbox relay and two saga workers,
all behind the breakwater proxy; a load generator, a live dashboard and chaos. At the end the
invariants are counted from the databases; the exit code is 1 if one broke.

  --duration <s>      how long the load runs (default ${shopDefaults.durationS}; 0: until Ctrl-C,
                      no chaos script: chaos by hand)
  --chaos <script>    ${chaosScripts.join(' | ')} (default: ${shopDefaults.chaos})
  --rate <n>          orders per second (default ${shopDefaults.rate})
  --db <url>          postgres://... for every store, a shop_* schema each: its shop_* schemas
                      are replaced on each run (default: SQLite files in a temp folder)
  --broker <url>      nats://, amqp://, redis:// (default: the SQL queue in the database)
  --port <n>          dashboard port (default ${shopDefaults.port}; if busy, a free one)
  --new-share <pct>   share of /orders the strangler sends to the new service (default ${shopDefaults.newShare})
  --no-proxy          run the outbound policies in-process instead of in the proxy
  --quiesce <s>       longest wait for the system to settle after the load (default ${shopDefaults.quiesceS})
  --break <what>      switch a safety net off to watch the checker catch it:
                      payments-idempotency, inbox (with --chaos lost-replies)
  --json <file>       also write the summary as JSON
  --quiet             no live lines, only the summary

policies: the resilience-policy scenarios against local services that fail on purpose
(5xx bursts, resets, hangs, a slow dependency, an outage), each without and with its policy.

  --only <names>      play only these scenarios: ${policyScenarioNames.join(', ')}

  -h, --help          show this help
`

/** The shop demo's options (see examples/shop/main.ts, which defines them). */
interface ShopOptions {
  durationS: number
  chaos: string
  rate: number
  port: number
  newShare: number
  quiesceS: number
  db?: string
  broker?: string
  noProxy: boolean
  breaks: string[]
  json?: string
  live: boolean
}

type Parsed =
  | { readonly help: true }
  | { readonly demo: 'policies'; readonly only: readonly PolicyScenarioName[] }
  | { readonly demo: 'shop'; readonly options: ShopOptions }

function isScenarioName(name: string): name is PolicyScenarioName {
  return (policyScenarioNames as readonly string[]).includes(name)
}

// Returns the parsed arguments, or the message that explains what is wrong with them.
function parsePolicies(args: readonly string[]): Parsed | string {
  let only: PolicyScenarioName[] = [...policyScenarioNames]
  let onlyGiven = false
  for (let i = 0; i < args.length; i++) {
    const arg = args[i]!
    if (arg.startsWith('--help=')) return '--help takes no value'
    if (arg === '--only' || arg.startsWith('--only=')) {
      if (onlyGiven) return '--only given twice'
      onlyGiven = true
      // As the shop's flags: a separate value that is itself a flag is a missing value.
      const next = args[i + 1]
      const value =
        arg !== '--only'
          ? arg.slice('--only='.length)
          : next === undefined || next.startsWith('--')
            ? undefined
            : args[++i]
      if (value === undefined || value === '')
        return `--only needs a list of scenarios, got ${shown(value)}`
      const names = value.split(',').map((name) => name.trim())
      const unknown = names.filter((name) => !isScenarioName(name))
      if (unknown.length > 0)
        return `unknown scenario "${unknown[0]}" (known: ${policyScenarioNames.join(', ')})`
      only = names.filter(isScenarioName)
    } else if (arg.startsWith('-')) {
      return `unknown option "${arg}"`
    } else {
      return `unknown demo "${arg}" (known: shop, policies)`
    }
  }
  return { demo: 'policies', only }
}

// A flag's numeric value: digits only (`1.5`, `1e3`, `0x10`, ` ` and `` are refused, never read
// as some other number), in the unit the flag documents.
const numericFlags: Partial<
  Record<
    string,
    {
      readonly key: 'durationS' | 'rate' | 'port' | 'newShare' | 'quiesceS'
      readonly min: number
      readonly max: number
      /** `seconds`: a whole number, `45` or `45s`; `whole`: a whole number; `decimal`: `2.5` too. */
      readonly kind: 'seconds' | 'whole' | 'decimal'
    }
  >
> = {
  '--duration': { key: 'durationS', min: 0, max: 86_400, kind: 'seconds' },
  '--rate': { key: 'rate', min: 0.1, max: 500, kind: 'decimal' },
  '--port': { key: 'port', min: 0, max: 65_535, kind: 'whole' },
  '--new-share': { key: 'newShare', min: 0, max: 100, kind: 'whole' },
  '--quiesce': { key: 'quiesceS', min: 1, max: 3_600, kind: 'seconds' },
}

const numberPatterns = {
  seconds: /^(\d{1,9})s?$/,
  whole: /^(\d{1,9})$/,
  decimal: /^(\d{1,9}(\.\d{1,6})?)$/,
}
const numberNouns = {
  seconds: 'a whole number of seconds',
  whole: 'a whole number',
  decimal: 'a number',
}

const booleanFlags = new Set(['--no-proxy', '--quiet', '--help', '-h'])
const knownFlags = new Set([
  ...Object.keys(numericFlags),
  ...booleanFlags,
  ...['--chaos', '--db', '--broker', '--break', '--json'],
])

/** `text` with any password or token in it hidden, quoted for a message. */
function shown(text: string | undefined): string {
  return text === undefined ? 'nothing' : `"${redactSecrets(text)}"`
}

/**
 * Why `--json <file>` cannot be written, or undefined when it can. Decision: the file is only
 * checked here, when the arguments are read, and written once at the end: it is neither
 * created nor truncated at start, so a run that fails to start or is stopped leaves an earlier
 * summary (or no file) behind rather than an empty one. The check: an existing path must be a
 * writable file; a new one needs an existing, writable folder. A write that still fails at the
 * end (folder removed meanwhile, disk full) is reported then, with the summary on stdout.
 */
function jsonFileProblem(file: string): string | undefined {
  const path = jsonPath(file)
  try {
    if (statSync(path).isDirectory()) return `--json ${file} is a folder, not a file`
    accessSync(path, constants.W_OK)
    return undefined
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'ENOENT')
      return `--json ${file} cannot be written: ${messageOf(error)}`
  }
  const folder = dirname(path)
  try {
    if (!statSync(folder).isDirectory()) return `--json ${file}: ${folder} is not a folder`
    accessSync(folder, constants.W_OK)
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'ENOENT'
      ? `--json ${file}: the folder ${folder} does not exist`
      : `--json ${file}: the folder ${folder} is not writable (${messageOf(error)})`
  }
  return undefined
}

/**
 * Where `--json <file>` is written: a relative file against the folder the command was typed
 * in. Run as this package's `npm start` (`npm start -- --json out.json`), that is npm's
 * `INIT_CWD`: npm runs the script in the package's own folder, where a relative path used to
 * land instead. Only then: any process started under some npm script inherits `INIT_CWD`, and
 * one run in another folder (`cd out && breakwater demo --json x.json` in a user's script)
 * means its own folder.
 */
function jsonPath(file: string): string {
  const env = process.env
  const byNpmStart =
    env.npm_lifecycle_event === 'start' && env.npm_package_name === 'breakwater' && env.INIT_CWD
  return resolve(byNpmStart ? (env.INIT_CWD as string) : process.cwd(), file)
}

function parseShop(args: readonly string[]): Parsed | string {
  const options: ShopOptions = { ...shopDefaults, noProxy: false, breaks: [], live: true }
  const seen = new Set<string>()
  for (let i = 0; i < args.length; i++) {
    const arg = args[i]!
    const eq = arg.startsWith('--') ? arg.indexOf('=') : -1
    const flag = eq < 0 ? arg : arg.slice(0, eq)
    // A separate value that is itself a flag (`--json --quiet`) is a missing value, not a value.
    const value = (): string | undefined => {
      if (eq >= 0) return arg.slice(eq + 1)
      const next = args[i + 1]
      if (next === undefined || next.startsWith('--')) return undefined
      i++
      return next
    }
    if (flag === 'shop' && i === 0) continue
    if (arg.startsWith('-') && !knownFlags.has(flag)) return `unknown option ${shown(arg)}`
    if (booleanFlags.has(flag) && eq >= 0) return `${flag} takes no value`
    // --break may name several safety nets, each once; every other flag is given at most once.
    if (knownFlags.has(flag) && flag !== '--break') {
      if (seen.has(flag)) return `${flag} given twice`
      seen.add(flag)
    }
    // Own keys only: a plain index also finds Object.prototype's members (constructor).
    const numeric = Object.hasOwn(numericFlags, flag) ? numericFlags[flag] : undefined
    if (numeric !== undefined) {
      const text = value()
      const match = text === undefined ? null : numberPatterns[numeric.kind].exec(text)
      const n = match === null ? Number.NaN : Number(match[1])
      if (!(n >= numeric.min && n <= numeric.max))
        return `${flag} needs ${numberNouns[numeric.kind]} from ${numeric.min} to ${numeric.max}, got ${shown(text)}`
      options[numeric.key] = n
      continue
    }
    if (flag === '--chaos') {
      const script = value()
      if (script === undefined || !(chaosScripts as readonly string[]).includes(script))
        return `--chaos needs one of ${chaosScripts.join(', ')}, got ${shown(script)}`
      options.chaos = script
    } else if (flag === '--db') {
      const url = value()
      if (url === undefined || !/^postgres(ql)?:\/\/./i.test(url))
        return `--db needs a postgres:// URL (SQLite is the default), got ${shown(url)}`
      // By the library's own check (src/stores/open.ts): one that does not parse is a bad
      // argument, not a database that "cannot open" once the shop is loaded.
      try {
        parseDatabaseUrl(url)
      } catch {
        return `--db needs a valid postgres:// URL, got ${shown(url)}`
      }
      options.db = url
    } else if (flag === '--broker') {
      const url = value()
      if (url === undefined || !/^(nats|amqps?|rediss?):\/\//.test(url))
        return `--broker needs a nats://, amqp:// or redis:// URL (the SQL queue is the default), got ${shown(url)}`
      if (brokerAddress(url) === undefined) return `--broker: not a URL with a host: ${shown(url)}`
      options.broker = url
    } else if (flag === '--break') {
      const what = value()
      if (what !== 'payments-idempotency' && what !== 'inbox')
        return `--break needs one of payments-idempotency, inbox, got ${shown(what)}`
      if (options.breaks.includes(what)) return `--break ${what} given twice`
      options.breaks.push(what)
    } else if (flag === '--json') {
      const file = value()
      if (file === undefined || file === '') return '--json needs a file name'
      // Checked as given (its messages quote it), written where jsonPath puts it.
      options.json = file
    } else if (flag === '--no-proxy') {
      options.noProxy = true
    } else if (flag === '--quiet') {
      options.live = false
    } else {
      return `unknown demo ${shown(arg)} (known: shop, policies)`
    }
  }
  // A chaos script's steps are placed at fractions of the duration: `--duration 0` (until
  // Ctrl-C) has none, so no step would ever play while the banner named the script. Given, it
  // is refused; by default, the run is without one and says so (chaos by hand, the dashboard).
  if (options.durationS === 0 && options.chaos !== 'none') {
    if (seen.has('--chaos'))
      return `--chaos ${options.chaos} is played over --duration, and --duration 0 has none: give a duration, or --chaos none (the chaos by hand, from the dashboard)`
    options.chaos = 'none'
  }
  if (options.json !== undefined) {
    const problem = jsonFileProblem(options.json)
    if (problem !== undefined) return problem
  }
  return { demo: 'shop', options }
}

function parse(args: readonly string[]): Parsed | string {
  // As every other command (wantsHelp): --help or -h anywhere, or help first, before any
  // argument is judged. A flag is never a separate value, and the help flag in a value's place
  // (`--json -h`) is a request for the usage, not a file named -h; `--json=-h` is a value.
  if (wantsHelp(args)) return { help: true }
  return args[0] === 'policies' ? parsePolicies(args.slice(1)) : parseShop(args)
}

/** What the shop demo resolves to: `ok` and the rest of the summary (written by --json). */
type ShopRun = (
  options: ShopOptions & { write: (line: string) => void },
) => Promise<{ ok: boolean }>

// The shop is compiled from examples/shop to dist/examples/shop (`npm run build`). This file
// runs from src/cli (tests) or dist/cli: both are two levels below the repository root.
async function loadShop(): Promise<ShopRun> {
  const entry = new URL('../../dist/examples/shop/main.js', import.meta.url).href
  const module = (await import(entry)) as { runShopDemo: ShopRun }
  return module.runShopDemo
}

/** An error's message, on one line; an AggregateError (every address of a host) gives all of its. */
function messageOf(error: unknown): string {
  const text =
    error instanceof AggregateError && error.errors.length > 0
      ? error.errors.map(messageOf).join('; ')
      : error instanceof Error
        ? error.message || error.name
        : String(error)
  const line = redactSecrets(text.trim().split('\n')[0]!.trim())
  return line.length > 300 ? `${line.slice(0, 300)}...` : line
}

const brokerPorts: Readonly<Record<string, number>> = {
  nats: 4222,
  amqp: 5672,
  amqps: 5671,
  redis: 6379,
  rediss: 6379,
}

/** The host and port a broker URL names, or undefined when it names none. */
function brokerAddress(url: string): { host: string; port: number } | undefined {
  let parsed: URL
  try {
    parsed = new URL(url)
  } catch {
    return undefined
  }
  const host = parsed.hostname.replace(/^\[(.*)\]$/, '$1')
  const port = parsed.port === '' ? brokerPorts[parsed.protocol.slice(0, -1)] : Number(parsed.port)
  return host === '' || port === undefined ? undefined : { host, port }
}

const connectTimeoutMs = 10_000

/**
 * Checks, before any service starts, that `--db` opens and that `--broker` accepts connections:
 * the one line that says which and why, instead of nine services failing each in its own way.
 * The broker is only connected to (a TCP connect): the shop's services speak its protocol.
 */
async function checkConnections(
  options: ShopOptions,
  stop: AbortSignal,
): Promise<string | undefined> {
  if (options.db !== undefined) {
    const { openDatabase } = await import('../stores/index.js')
    try {
      const db = await openDatabase(options.db, {
        postgres: { maxConnections: 1, connectionTimeoutMs: connectTimeoutMs },
      })
      // Stopped meanwhile: close() refuses the statement waiting for its connection and drops
      // the connect, rather than wait up to connectTimeoutMs for a server that does not answer.
      const abandon = (): void => void db.close().catch(() => {})
      stop.addEventListener('abort', abandon, { once: true })
      try {
        if (!stop.aborted) await db.execute('SELECT 1')
      } finally {
        stop.removeEventListener('abort', abandon)
        await db.close().catch(() => {})
      }
    } catch (error) {
      if (stop.aborted) return undefined
      return `cannot open --db ${redactSecrets(options.db)}: ${messageOf(error)}`
    }
  }
  if (options.broker !== undefined && !stop.aborted) {
    const url = options.broker
    const address = brokerAddress(url)!
    const reached = await new Promise<string | undefined>((done) => {
      const socket = connect(address)
      const abandon = (): void => {
        socket.destroy()
        done(undefined)
      }
      stop.addEventListener('abort', abandon, { once: true })
      socket.once('close', () => stop.removeEventListener('abort', abandon))
      socket.setTimeout(connectTimeoutMs, () =>
        socket.destroy(
          new Error(
            `no answer from ${address.host}:${address.port} within ${connectTimeoutMs / 1000} s`,
          ),
        ),
      )
      socket.once('connect', () => {
        socket.destroy()
        done(undefined)
      })
      socket.once('error', (error) => done(messageOf(error)))
    })
    if (reached !== undefined) return `cannot reach --broker ${redactSecrets(url)}: ${reached}`
  }
  return undefined
}

/** What `demoCommand` runs the shop with (tests replace it). */
export interface DemoCommandDeps {
  /** Loads the shop demo's runner (default: dist/examples/shop/main.js). */
  readonly loadShop?: () => Promise<ShopRun>
  /**
   * SIGTERM and SIGINT as held since before this module loaded (main.ts holds them from before
   * its import). @default held from the call on, on `signals`
   */
  readonly held?: HeldSignals
  /** Where SIGTERM and SIGINT are held from when `held` is not given. @default process */
  readonly signals?: SignalTarget
}

/**
 * `breakwater demo [shop] [options]` runs the shop and resolves to 0 when every invariant held,
 * 1 when one broke, or when the shop could not start or --json could not be written;
 * `breakwater demo policies [--only <scenarios>]` plays the policy scenarios (0 when the run
 * completes). 2 for bad arguments. SIGTERM or SIGINT before the shop starts (while its modules
 * load, or --db and --broker are checked) ends the demo there, 0, with nothing started; once
 * the shop runs they are its own (see examples/shop/main.ts). The policy scenarios leave them
 * their default action.
 */
export async function demoCommand(args: string[], deps: DemoCommandDeps = {}): Promise<number> {
  const held = deps.held ?? holdSignals(deps.signals)
  try {
    return await runDemo(args, deps, held)
  } finally {
    // What is still held is let go: after --help or a bad argument, which end here anyway, or
    // after the policy scenarios, which are over.
    held.handOver()
  }
}

async function runDemo(args: string[], deps: DemoCommandDeps, held: HeldSignals): Promise<number> {
  const parsed = parse(args)
  if (typeof parsed === 'string') {
    // Redacted here for both parsers: a message quotes the argument at fault, which may be a
    // database URL (`demo policies --db=postgres://app:pw@db/app`).
    process.stderr.write(`breakwater demo: ${oneLine(parsed)}\n\n${usage}`)
    return 2
  }
  if ('help' in parsed) {
    process.stdout.write(usage)
    return 0
  }
  const write = (line: string): void => void process.stdout.write(`${line}\n`)
  const fail = (message: string): number => {
    process.stderr.write(`breakwater demo: ${message}\n`)
    return 1
  }
  if (parsed.demo === 'policies') {
    // No graceful stop of their own: a signal ends the scenarios by its default action.
    held.release()
    try {
      await runPoliciesDemo({ only: parsed.only, write })
    } catch (error) {
      return fail(`the policy scenarios failed: ${messageOf(error)}`)
    }
    return 0
  }
  // From here a signal held is the shop's graceful stop, also when the start fails.
  return runShop(parsed.options, deps, held, write, fail)
}

async function runShop(
  parsedOptions: ShopOptions,
  deps: DemoCommandDeps,
  held: HeldSignals,
  write: (line: string) => void,
  fail: (message: string) => number,
): Promise<number> {
  let runShopDemo: ShopRun
  try {
    runShopDemo = await (deps.loadShop ?? loadShop)()
  } catch (error) {
    return fail(`the shop is not built (${messageOf(error)}); run \`npm run build\` first`)
  }
  const stopped = (signal = String(held.signal.reason)): number => {
    write(`stopped by ${signal} before the shop started; nothing was started`)
    return 0
  }
  if (held.signal.aborted) return stopped()
  const unreachable = await checkConnections(parsedOptions, held.signal)
  if (held.signal.aborted) return stopped()
  if (unreachable !== undefined) return fail(unreachable)
  // The shop gets no `json`: the summary is written here, so a failed write is reported
  // without losing it.
  const { json, ...options } = parsedOptions
  let result: { ok: boolean }
  try {
    // The shop stops on SIGHUP as on SIGTERM: one held while the demo loaded stops it here.
    if (held.takeHangup()) return stopped('SIGHUP')
    // runShopDemo installs its SIGTERM, SIGINT and SIGHUP handlers as it is called, before its
    // first await: handed over in the same turn, no signal falls between the two.
    const running = runShopDemo({ ...options, write })
    held.handOver()
    result = await running
  } catch (error) {
    // A service's own output (its stderr) has been shown already, as the shop reports it.
    return fail(`the shop failed: ${messageOf(error)}`)
  }
  if (json !== undefined) {
    const text = JSON.stringify(result, null, 2)
    try {
      writeFileSync(jsonPath(json), text)
    } catch (error) {
      process.stdout.write(`${text}\n`)
      return fail(`cannot write --json ${json}: ${messageOf(error)} (the summary is printed above)`)
    }
  }
  return result.ok ? 0 : 1
}
