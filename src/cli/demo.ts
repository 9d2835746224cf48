// `breakwater demo`: the shop (examples/shop: a small system built on breakwater's public API,
// each service its own process, behind the breakwater proxy, with a live dashboard, load and
// chaos) by default; `breakwater demo policies` plays the resilience-policy scenarios.
import {
  type PolicyScenarioName,
  policyScenarioNames,
  runPoliciesDemo,
} from '../demo/policies/index.js'

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

  --duration <s>      how long the load runs (default ${shopDefaults.durationS}; 0: until Ctrl-C)
  --chaos <script>    ${chaosScripts.join(' | ')} (default: ${shopDefaults.chaos})
  --rate <n>          orders per second (default ${shopDefaults.rate})
  --db <url>          postgres://... for every store (default: SQLite files in a temp folder)
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
  for (let i = 0; i < args.length; i++) {
    const arg = args[i]!
    if (arg === '--help' || arg === '-h') return { help: true }
    if (arg === '--only' || arg.startsWith('--only=')) {
      const value = arg === '--only' ? args[++i] : arg.slice('--only='.length)
      if (value === undefined || value === '') return '--only needs a list of scenarios'
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

function parseShop(args: readonly string[]): Parsed | string {
  const options: ShopOptions = { ...shopDefaults, noProxy: false, breaks: [], live: true }
  const number = (flag: string, value: string | undefined, min: number, max: number) => {
    const n = Number(value)
    if (value === undefined || value === '' || !Number.isFinite(n) || n < min || n > max)
      return `${flag} needs a number from ${min} to ${max}, got ${value === undefined ? 'nothing' : `"${value}"`}`
    return n
  }
  for (let i = 0; i < args.length; i++) {
    const arg = args[i]!
    const eq = arg.startsWith('--') ? arg.indexOf('=') : -1
    const flag = eq < 0 ? arg : arg.slice(0, eq)
    const value = (): string | undefined => (eq < 0 ? args[++i] : arg.slice(eq + 1))
    const numeric: Partial<Record<string, [keyof ShopOptions, number, number]>> = {
      '--duration': ['durationS', 0, 86_400],
      '--rate': ['rate', 0.1, 500],
      '--port': ['port', 0, 65_535],
      '--new-share': ['newShare', 0, 100],
      '--quiesce': ['quiesceS', 1, 3_600],
    }
    const range = numeric[flag]
    if (range !== undefined) {
      const n = number(flag, value(), range[1], range[2])
      if (typeof n === 'string') return n
      ;(options as unknown as Record<string, number>)[range[0]] = n
      continue
    }
    if (flag === '--help' || flag === '-h') return { help: true }
    if (flag === 'shop' && i === 0) continue
    if (flag === '--chaos') {
      const script = value()
      if (script === undefined || !(chaosScripts as readonly string[]).includes(script))
        return `--chaos needs one of ${chaosScripts.join(', ')}`
      options.chaos = script
    } else if (flag === '--db') {
      const url = value()
      if (url === undefined || !/^postgres(ql)?:\/\//.test(url))
        return '--db needs a postgres:// URL (SQLite is the default)'
      options.db = url
    } else if (flag === '--broker') {
      const url = value()
      if (url === undefined || !/^(nats|amqps?|rediss?):\/\//.test(url))
        return '--broker needs a nats://, amqp:// or redis:// URL (the SQL queue is the default)'
      options.broker = url
    } else if (flag === '--break') {
      const what = value()
      if (what !== 'payments-idempotency' && what !== 'inbox')
        return '--break takes: payments-idempotency, inbox'
      options.breaks.push(what)
    } else if (flag === '--json') {
      const file = value()
      if (file === undefined || file === '') return '--json needs a file name'
      options.json = file
    } else if (flag === '--no-proxy') {
      options.noProxy = true
    } else if (flag === '--quiet') {
      options.live = false
    } else if (arg.startsWith('-')) {
      return `unknown option "${arg}"`
    } else {
      return `unknown demo "${arg}" (known: shop, policies)`
    }
  }
  return { demo: 'shop', options }
}

function parse(args: readonly string[]): Parsed | string {
  return args[0] === 'policies' ? parsePolicies(args.slice(1)) : parseShop(args)
}

// The shop is compiled from examples/shop to dist/examples/shop (`npm run build`). This file
// runs from src/cli (tests) or dist/cli: both are two levels below the repository root.
async function loadShop(): Promise<
  (options: ShopOptions & { write: (line: string) => void }) => Promise<{ ok: boolean }>
> {
  const entry = new URL('../../dist/examples/shop/main.js', import.meta.url).href
  const module = (await import(entry)) as {
    runShopDemo: (
      options: ShopOptions & { write: (line: string) => void },
    ) => Promise<{ ok: boolean }>
  }
  return module.runShopDemo
}

/**
 * `breakwater demo [shop] [options]` runs the shop and resolves to 0 when every invariant held,
 * 1 when one broke; `breakwater demo policies [--only <scenarios>]` plays the policy scenarios
 * (0 when the run completes). 2 for bad arguments.
 */
export async function demoCommand(args: string[]): Promise<number> {
  const parsed = parse(args)
  if (typeof parsed === 'string') {
    process.stderr.write(`breakwater demo: ${parsed}\n\n${usage}`)
    return 2
  }
  if ('help' in parsed) {
    process.stdout.write(usage)
    return 0
  }
  const write = (line: string): void => void process.stdout.write(`${line}\n`)
  if (parsed.demo === 'policies') {
    await runPoliciesDemo({ only: parsed.only, write })
    return 0
  }
  let runShopDemo: Awaited<ReturnType<typeof loadShop>>
  try {
    runShopDemo = await loadShop()
  } catch (error) {
    process.stderr.write(
      `breakwater demo: the shop is not built (${error instanceof Error ? error.message : String(error)}); run \`npm run build\` first\n`,
    )
    return 1
  }
  const result = await runShopDemo({ ...parsed.options, write })
  return result.ok ? 0 : 1
}
