// `npm run bench -- proxy`: throughput, latency and CPU per request of an HTTP hop on loopback,
// breakwater's ambassador side by side with http-proxy and nginx. Writes bench/results/proxy.json.
//
// Every server runs in its own process (bench/lib/proxy-roles.ts): a node:http upstream
// answering 1 KiB; breakwater's ambassador with every policy on (connect/read/overall
// timeouts, retry with budget, circuit breaker, bulkhead, outlier ejection), through
// startProxy and (case breakwater-service-runtime) as the bare ServiceRuntime behind a
// minimal node:http front; http-proxy 1.18
// with a keep-alive agent; nginx (Debian package, one worker, master process off, keep-alive
// upstream pool). One run: wrk (1 thread, 64 connections; autocannon when wrk is missing)
// against each case in turn, `--rounds` times for `--seconds` each after a warmup (this machine
// is shared: interleaved rounds let other tenants' load hit every case alike), reporting the
// median round's requests/s, p50 and p99 latency, and the proxy process's CPU time
// (process.cpuUsage, or /proc for nginx) over all the requests it served. Then one connection,
// unloaded, in rounds too: p50 through each proxy minus p50 direct, the latency one hop adds.
//
// Case breakwater-ambassador-2-workers: the real multi-process mode, `breakwater proxy --config
// file.yaml` with `workers: 2` (node:cluster: a primary and two workers sharing the listener
// port), the same service config; its CPU is the primary's plus both workers'.
//
// Fairness and caveats:
// - Access logs are off on both sides (nginx `access_log off`, breakwater `accessLog: false`):
//   a JSON line per request is a cost of its own (building and writing it), measured by
//   neither. Turn both on together or neither.
// - The machine has 2 cores, shared with other tenants: wrk, the upstream and the proxy (or
//   its 2 workers) all run on those same 2 cores, so a second worker cannot double
//   throughput here; what it shows is that the mode works and spreads the proxy's share of
//   the CPU over both cores. Scaling with cores needs a machine where wrk and the upstream
//   have cores of their own.
//
// Cases shadow-gateway-1-worker and shadow-gateway-2-workers (scaling with cores): a strangler
// gateway that shadows every request and diffs two 21 KiB JSON answers from a canned-response
// upstream, run as one process and as `workers: 2`, 32 connections. There the proxy is the
// busiest process, so the second core has work to take; `speedup_vs_1_worker` is the ratio
// of their req/s, and `shadow_compared_share` shows every comparison ran (none skipped).
//
// Options: --seconds N (default 4), --rounds N (default 5), --warmup N (default 2),
// --front minimal (the ServiceRuntime behind a bare node:http server instead of startProxy),
// --scaling-only (just the two scaling cases, printed, no results file).
import { type ChildProcess, execFileSync, spawn, spawnSync } from 'node:child_process'
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { builtCli } from './lib/built.js'
import { median, type ResultRow, writeResults } from './lib/harness.js'
import { benchProxyYaml, benchShadowGatewayYaml } from './lib/proxy-config.js'

const here = dirname(fileURLToPath(import.meta.url))
const rolesFile = join(here, 'lib', 'proxy-roles.ts')
const connections = 64

interface Running {
  readonly child: ChildProcess
  readonly port: number
  readonly info: Record<string, unknown>
  /** CPU time used so far, in microseconds. */
  cpuUs(): Promise<number>
  stop(): Promise<void>
}

function startRole(role: string, args: Record<string, unknown> = {}): Promise<Running> {
  const child = spawn(
    process.execPath,
    ['--import', 'tsx', rolesFile, role, JSON.stringify(args)],
    { stdio: ['ignore', 'pipe', 'inherit', 'ipc'] },
  )
  return new Promise((resolve, reject) => {
    let buffered = ''
    child.once('exit', (code) => reject(new Error(`${role} exited with ${code}`)))
    child.stdout?.on('data', (chunk: Buffer) => {
      buffered += chunk.toString()
      const newline = buffered.indexOf('\n')
      if (newline < 0) return
      const info = JSON.parse(buffered.slice(0, newline)) as Record<string, unknown>
      resolve({
        child,
        port: Number(info.port),
        info,
        cpuUs: () =>
          new Promise((done) => {
            child.once('message', (message: { cpu: { user: number; system: number } }) =>
              done(message.cpu.user + message.cpu.system),
            )
            child.send('cpu')
          }),
        stop: () => stopChild(child),
      })
    })
  })
}

function stopChild(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve()
  return new Promise((resolve) => {
    child.removeAllListeners('exit')
    child.once('exit', () => resolve())
    child.kill('SIGTERM')
  })
}

function has(command: string): boolean {
  return spawnSync('sh', ['-c', `command -v ${command}`]).status === 0
}

/** Installs a Debian package when missing and running as root; false when it stays missing. */
function ensurePackage(command: string, pkg: string): boolean {
  if (has(command)) return true
  if (process.getuid?.() !== 0) return false
  console.log(`installing ${pkg} with apt-get`)
  let result = spawnSync('apt-get', ['install', '-y', pkg], { stdio: 'ignore' })
  if (result.status !== 0) {
    spawnSync('apt-get', ['update'], { stdio: 'ignore' })
    result = spawnSync('apt-get', ['install', '-y', pkg], { stdio: 'ignore' })
  }
  return has(command)
}

// ---------------------------------------------------------------------------------------------
// nginx: one process (master_process off, one worker), keep-alive pool to the upstream.
// ---------------------------------------------------------------------------------------------

async function startNginx(upstreamPort: number): Promise<Running> {
  const nginx = has('nginx') ? 'nginx' : '/usr/sbin/nginx'
  const dir = mkdtempSync(join(tmpdir(), 'breakwater-nginx-'))
  for (const sub of ['body', 'proxy', 'fastcgi', 'uwsgi', 'scgi']) mkdirSync(join(dir, sub))
  const port = await freePort()
  writeFileSync(
    join(dir, 'nginx.conf'),
    `worker_processes 1;
master_process off;
daemon off;
pid ${dir}/nginx.pid;
error_log ${dir}/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path ${dir}/body;
  proxy_temp_path ${dir}/proxy;
  fastcgi_temp_path ${dir}/fastcgi;
  uwsgi_temp_path ${dir}/uwsgi;
  scgi_temp_path ${dir}/scgi;
  keepalive_requests 1000000;
  upstream bench { server 127.0.0.1:${upstreamPort}; keepalive 64; keepalive_requests 1000000; }
  server {
    listen 127.0.0.1:${port};
    location / {
      proxy_pass http://bench;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
}
`,
  )
  const child = spawn(nginx, ['-p', dir, '-c', join(dir, 'nginx.conf')], {
    stdio: ['ignore', 'ignore', 'inherit'],
  })
  await waitForPort(port)
  const ticks = Number(execFileSync('getconf', ['CLK_TCK']).toString().trim()) || 100
  return {
    child,
    port,
    info: {},
    cpuUs: async () => {
      const fields = readFileSync(`/proc/${child.pid}/stat`, 'utf8').split(') ')[1]!.split(' ')
      // utime and stime are fields 14 and 15 of the whole line (11 and 12 after "pid (comm) ").
      return ((Number(fields[11]) + Number(fields[12])) / ticks) * 1e6
    },
    stop: async () => {
      await stopChild(child)
      rmSync(dir, { recursive: true, force: true })
    },
  }
}

// ---------------------------------------------------------------------------------------------
// breakwater multi-process: the real `breakwater proxy --config file.yaml --workers N` command
// (node:cluster, the workers share the listener port), with the same service config as the
// single-process case. CPU: the primary and every worker, read from /proc.
// ---------------------------------------------------------------------------------------------

async function startBreakwaterWorkers(
  yaml: (port: number) => string,
  workers: number,
  env: Record<string, string> = {},
): Promise<Running> {
  const dir = mkdtempSync(join(tmpdir(), 'breakwater-proxy-'))
  const port = await freePort()
  const file = join(dir, 'proxy.yaml')
  writeFileSync(file, yaml(port))
  const child = spawn(
    process.execPath,
    [builtCli, 'proxy', '--config', file, '--log-level', 'warn'],
    { stdio: ['ignore', 'ignore', 'inherit'], env: { ...process.env, ...env } },
  )
  const pid = child.pid!
  const childrenOf = (parent: number): number[] => {
    try {
      return readFileSync(`/proc/${parent}/task/${parent}/children`, 'utf8')
        .trim()
        .split(/\s+/)
        .filter((text) => text !== '')
        .map(Number)
    } catch {
      return []
    }
  }
  await waitForPort(port)
  // The port answers once the first worker listens; wait for all of them to be up (a single
  // process, workers: 1, has none).
  for (let i = 0; i < 200 && workers > 1 && childrenOf(pid).length < workers; i++)
    await new Promise((resolve) => setTimeout(resolve, 25))
  await new Promise((resolve) => setTimeout(resolve, 1_000))
  const ticks = Number(execFileSync('getconf', ['CLK_TCK']).toString().trim()) || 100
  const cpuOf = (target: number): number => {
    try {
      const fields = readFileSync(`/proc/${target}/stat`, 'utf8').split(') ')[1]!.split(' ')
      return ((Number(fields[11]) + Number(fields[12])) / ticks) * 1e6
    } catch {
      return 0
    }
  }
  return {
    child,
    port,
    info: { workers },
    cpuUs: async () => [pid, ...childrenOf(pid)].reduce((sum, p) => sum + cpuOf(p), 0),
    stop: async () => {
      await stopChild(child)
      rmSync(dir, { recursive: true, force: true })
    },
  }
}

async function freePort(): Promise<number> {
  const { createServer } = await import('node:net')
  const server = createServer()
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const port = (server.address() as { port: number }).port
  await new Promise<void>((resolve) => server.close(() => resolve()))
  return port
}

async function waitForPort(port: number): Promise<void> {
  const { connect } = await import('node:net')
  for (let i = 0; i < 200; i++) {
    const ok = await new Promise<boolean>((resolve) => {
      const socket = connect(port, '127.0.0.1')
      socket.once('connect', () => {
        socket.destroy()
        resolve(true)
      })
      socket.once('error', () => resolve(false))
    })
    if (ok) return
    await new Promise((resolve) => setTimeout(resolve, 25))
  }
  throw new Error(`nothing listens on ${port}`)
}

// ---------------------------------------------------------------------------------------------
// Load generation
// ---------------------------------------------------------------------------------------------

interface LoadResult {
  readonly requests: number
  readonly rps: number
  readonly p50Ms: number
  readonly p99Ms: number
  readonly errors: number
}

function wrkMs(text: string, label: string): number {
  const match = new RegExp(`^\\s*${label}\\s+([\\d.]+)(us|ms|s)\\s*$`, 'm').exec(text)
  if (match === null) return Number.NaN
  const value = Number(match[1])
  return match[2] === 'us' ? value / 1000 : match[2] === 's' ? value * 1000 : value
}

async function runLoad(url: string, conns: number, seconds: number): Promise<LoadResult> {
  if (has('wrk')) {
    const out = await new Promise<string>((resolve, reject) => {
      const child = spawn('wrk', ['-t1', `-c${conns}`, `-d${seconds}s`, '--latency', url])
      let text = ''
      child.stdout.on('data', (chunk: Buffer) => {
        text += chunk.toString()
      })
      child.once('exit', (code) => (code === 0 ? resolve(text) : reject(new Error(text))))
    })
    const requests = Number(/(\d+) requests in/.exec(out)?.[1] ?? 0)
    const errors =
      Number(/Non-2xx or 3xx responses: (\d+)/.exec(out)?.[1] ?? 0) +
      (/Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)/
        .exec(out)
        ?.slice(1)
        .reduce((sum, n) => sum + Number(n), 0) ?? 0)
    return {
      requests,
      rps: Number(/Requests\/sec:\s+([\d.]+)/.exec(out)?.[1] ?? 0),
      p50Ms: wrkMs(out, '50%'),
      p99Ms: wrkMs(out, '99%'),
      errors,
    }
  }
  // autocannon ships no types; this is the part of its result used here.
  const module = (await import('autocannon' as string)) as {
    default: (options: Record<string, unknown>) => Promise<{
      requests: { total: number; average: number }
      latency: { p50: number; p99: number }
      errors: number
      non2xx: number
    }>
  }
  const result = await module.default({ url, connections: conns, duration: seconds })
  return {
    requests: result.requests.total,
    rps: result.requests.average,
    p50Ms: result.latency.p50,
    p99Ms: result.latency.p99,
    errors: result.errors + result.non2xx,
  }
}

// ---------------------------------------------------------------------------------------------

/** A case under load: its name, its URL, and the process whose CPU it is charged. */
interface LoadCase {
  readonly name: string
  readonly url: string
  readonly running: Running | undefined
}

/** A case's figures over its rounds: medians of req/s and latency, CPU over all requests. */
interface RoundsResult extends LoadResult {
  /** CPU of `running` per request over all rounds; undefined without a process. */
  readonly cpuUsPerRequest: number | undefined
}

/**
 * Warms every case up (unless `warmup` is 0), then runs `rounds` rounds, each case once per round in turn, so that
 * load from other tenants of the machine hits all of them alike. A case's figure is the
 * median of its rounds; its CPU per request is all its CPU over all its requests.
 */
async function measureInRounds(
  cases: readonly LoadCase[],
  conns: number,
  { rounds, seconds, warmup }: { rounds: number; seconds: number; warmup: number },
): Promise<Map<string, RoundsResult>> {
  if (warmup > 0) for (const c of cases) await runLoad(c.url, conns, warmup)
  const perRound = new Map<string, LoadResult[]>(cases.map((c) => [c.name, []]))
  const cpuUs = new Map<string, number>(cases.map((c) => [c.name, 0]))
  for (let round = 0; round < rounds; round++) {
    for (const c of cases) {
      const before = (await c.running?.cpuUs()) ?? 0
      const result = await runLoad(c.url, conns, seconds)
      const after = (await c.running?.cpuUs()) ?? 0
      perRound.get(c.name)!.push(result)
      cpuUs.set(c.name, cpuUs.get(c.name)! + after - before)
      console.log(
        `round ${round + 1} ${c.name}: ${result.rps.toFixed(0)} req/s, p50 ${result.p50Ms} ms, p99 ${result.p99Ms} ms`,
      )
    }
  }
  const measured = new Map<string, RoundsResult>()
  for (const c of cases) {
    const results = perRound.get(c.name)!
    const requests = results.reduce((sum, r) => sum + r.requests, 0)
    measured.set(c.name, {
      requests,
      rps: median(results.map((r) => r.rps)),
      p50Ms: median(results.map((r) => r.p50Ms)),
      p99Ms: median(results.map((r) => r.p99Ms)),
      errors: results.reduce((sum, r) => sum + r.errors, 0),
      cpuUsPerRequest:
        c.running === undefined ? undefined : cpuUs.get(c.name)! / Math.max(1, requests),
    })
  }
  return measured
}

/** The rows every case reports: req/s, p50, p99, proxy CPU per request, errors when any. */
function loadRows(product: string, name: string, result: RoundsResult): ResultRow[] {
  const rows: ResultRow[] = [
    { subject: product, case: name, metric: 'requests_per_s', value: result.rps },
    { subject: product, case: name, metric: 'p50_ms', value: result.p50Ms },
    { subject: product, case: name, metric: 'p99_ms', value: result.p99Ms },
  ]
  if (result.cpuUsPerRequest !== undefined)
    rows.push({
      subject: product,
      case: name,
      metric: 'proxy_cpu_us_per_req',
      value: result.cpuUsPerRequest,
    })
  if (result.errors > 0)
    rows.push({ subject: product, case: name, metric: 'errors', value: result.errors })
  return rows
}

interface Subject {
  /** The case name (direct, breakwater-ambassador, breakwater-ambassador-2-workers, ...). */
  readonly name: string
  /** The product measured (the rows' subject). */
  readonly product: string
  readonly url: string
  readonly running: Running | undefined
}

export async function main(argv: string[]): Promise<void> {
  const option = (name: string, fallback: string): string => {
    const i = argv.indexOf(`--${name}`)
    return i >= 0 && argv[i + 1] !== undefined ? argv[i + 1]! : fallback
  }
  const seconds = Number(option('seconds', '4'))
  const rounds = Number(option('rounds', '5'))
  const warmup = Number(option('warmup', '2'))
  const front = option('front', 'startProxy')
  if (argv.includes('--scaling-only')) {
    const rows = await measureScaling(rounds, seconds, warmup)
    for (const row of rows) console.log(`${row.case} ${row.metric} ${row.value.toFixed(3)}`)
    return
  }
  if (!ensurePackage('wrk', 'wrk')) console.log('wrk missing (not root?): using autocannon')
  const rows: ResultRow[] = []
  const started: Running[] = []
  try {
    const upstream = await startRole('upstream')
    started.push(upstream)
    const upstreamUrl = `http://127.0.0.1:${upstream.port}`
    const subjects: Subject[] = [
      { name: 'direct', product: 'node-http', url: `${upstreamUrl}/bench/x`, running: undefined },
    ]
    const bw = await startRole('breakwater', { upstream: upstreamUrl, front })
    started.push(bw)
    console.log(`breakwater front: ${String(bw.info.front)}`)
    subjects.push({
      name: 'breakwater-ambassador',
      product: 'breakwater',
      url: `http://127.0.0.1:${bw.port}/bench/x`,
      running: bw,
    })
    if (bw.info.front === 'startProxy') {
      // The same service runtime behind a bare node:http front: what the upstream side costs
      // apart from the inbound listener's work.
      const bare = await startRole('breakwater', { upstream: upstreamUrl, front: 'minimal' })
      started.push(bare)
      subjects.push({
        name: 'breakwater-service-runtime',
        product: 'breakwater',
        url: `http://127.0.0.1:${bare.port}/bench/x`,
        running: bare,
      })
    }
    // The real multi-process mode, through the CLI (one primary, `workers` workers).
    const bwWorkers = await startBreakwaterWorkers(
      (port) => benchProxyYaml(upstreamUrl, port, 2),
      2,
    )
    started.push(bwWorkers)
    subjects.push({
      name: 'breakwater-ambassador-2-workers',
      product: 'breakwater',
      url: `http://127.0.0.1:${bwWorkers.port}/bench/x`,
      running: bwWorkers,
    })
    const hp = await startRole('http-proxy', { upstream: upstreamUrl })
    started.push(hp)
    subjects.push({
      name: 'http-proxy',
      product: 'http-proxy',
      url: `http://127.0.0.1:${hp.port}/bench/x`,
      running: hp,
    })
    if (ensurePackage('nginx', 'nginx') || has('/usr/sbin/nginx')) {
      const ngx = await startNginx(upstream.port)
      started.push(ngx)
      subjects.push({
        name: 'nginx',
        product: 'nginx',
        url: `http://127.0.0.1:${ngx.port}/bench/x`,
        running: ngx,
      })
    } else {
      console.log('nginx: skipped (not installed and not running as root to apt-get install it)')
    }

    const loaded = await measureInRounds(subjects, connections, { rounds, seconds, warmup })
    for (const subject of subjects) {
      rows.push(...loadRows(subject.product, subject.name, loaded.get(subject.name)!))
    }
    const direct = loaded.get('direct')!
    for (const subject of subjects) {
      if (subject.name === 'direct') continue
      rows.push({
        subject: subject.product,
        case: subject.name,
        metric: 'throughput_vs_direct',
        value: loaded.get(subject.name)!.rps / direct.rps,
      })
    }
    for (const subject of subjects) {
      if (subject.product !== 'breakwater') continue
      for (const peer of ['http-proxy', 'nginx']) {
        const peerLoaded = loaded.get(peer)
        if (peerLoaded !== undefined)
          rows.push({
            subject: subject.product,
            case: subject.name,
            metric: `throughput_vs_${peer.replace('-', '_')}`,
            value: loaded.get(subject.name)!.rps / peerLoaded.rps,
          })
      }
    }

    // One connection, unloaded: what one hop adds to the median.
    const single = new Map<string, number[]>(subjects.map((s) => [s.name, []]))
    for (const subject of subjects) await runLoad(subject.url, 1, 1)
    for (let round = 0; round < rounds; round++) {
      for (const subject of subjects)
        single.get(subject.name)!.push((await runLoad(subject.url, 1, 2)).p50Ms)
    }
    const directP50 = median(single.get('direct')!)
    for (const subject of subjects) {
      const p50 = median(single.get(subject.name)!)
      // Subject here is the case name: two cases share the product breakwater.
      rows.push({ subject: subject.name, case: 'one-connection', metric: 'p50_ms', value: p50 })
      if (subject.name !== 'direct')
        rows.push({
          subject: subject.name,
          case: 'one-connection-added-p50',
          metric: 'ms',
          value: p50 - directP50,
        })
    }
  } finally {
    for (const running of started.reverse()) await running.stop()
  }
  rows.push(...(await measureScaling(rounds, seconds, warmup)))
  writeResults('proxy', rows)
}

// ---------------------------------------------------------------------------------------------
// Scaling with cores: the multi-process mode where the proxy is the busiest process
// ---------------------------------------------------------------------------------------------

const scalingConnections = 32
const adminToken = 'bench-admin-token-0123456789'

/**
 * The same strangler gateway, one process (`workers: 1`) and two (`workers: 2`), shadowing
 * every request and diffing two 21 KiB JSON answers from a canned-response upstream. The
 * proxy does most of the work here (two forwards, two parses, a diff per request), so a second
 * worker on the second core shows what the multi-process mode adds; in the ambassador cases
 * above wrk and the upstream take as much CPU as the proxy and nothing is left to add. Reports
 * each one's req/s and CPU per request, the speedup, and the share of requests whose shadow
 * comparison ran (a full shadow runner skips instead of queueing).
 */
async function measureScaling(
  rounds: number,
  seconds: number,
  warmup: number,
): Promise<ResultRow[]> {
  const rows: ResultRow[] = []
  const started: Running[] = []
  try {
    const upstream = await startRole('upstream-json')
    started.push(upstream)
    const upstreamUrl = `http://127.0.0.1:${upstream.port}`
    const variants: { name: string; running: Running; adminPort: number }[] = []
    for (const workers of [1, 2]) {
      const adminPort = await freePort()
      const running = await startBreakwaterWorkers(
        (port) => benchShadowGatewayYaml(upstreamUrl, port, adminPort, workers),
        workers,
        { BENCH_ADMIN_TOKEN: adminToken },
      )
      started.push(running)
      variants.push({
        name: workers === 1 ? 'shadow-gateway-1-worker' : 'shadow-gateway-2-workers',
        running,
        adminPort,
      })
    }
    const cases = variants.map((v) => ({ ...v, url: `http://127.0.0.1:${v.running.port}/orders` }))
    for (const c of cases) await runLoad(c.url, scalingConnections, warmup)
    // Counted from here: the share is of the measured rounds' requests, not the warmup's.
    const comparisonsBefore = new Map<string, Comparisons>()
    for (const v of variants) comparisonsBefore.set(v.name, await shadowComparisons(v.adminPort))
    const measured = await measureInRounds(cases, scalingConnections, {
      rounds,
      seconds,
      warmup: 0,
    })
    const rps = new Map<string, number>()
    for (const v of variants) {
      const result = measured.get(v.name)!
      rps.set(v.name, result.rps)
      rows.push(...loadRows('breakwater', v.name, result))
      const after = await shadowComparisons(v.adminPort)
      const before = comparisonsBefore.get(v.name)!
      const ran = after.ran - before.ran
      const skipped = after.skipped - before.skipped
      rows.push({
        subject: 'breakwater',
        case: v.name,
        metric: 'shadow_compared_share',
        value: ran / Math.max(1, ran + skipped),
      })
    }
    rows.push({
      subject: 'breakwater',
      case: 'shadow-gateway-2-workers',
      metric: 'speedup_vs_1_worker',
      value: rps.get('shadow-gateway-2-workers')! / rps.get('shadow-gateway-1-worker')!,
    })
  } finally {
    for (const running of started.reverse()) await running.stop()
  }
  return rows
}

interface Comparisons {
  /** Comparisons that ran (match, mismatch or error). */
  readonly ran: number
  /** Comparisons skipped because the shadow runner was full or a body was cut. */
  readonly skipped: number
}

/** The gateway's shadow comparison counters so far, summed over its workers. */
async function shadowComparisons(adminPort: number): Promise<Comparisons> {
  const response = await fetch(`http://127.0.0.1:${adminPort}/metrics`)
  const text = await response.text()
  let ran = 0
  let skipped = 0
  for (const line of text.split('\n')) {
    if (!line.startsWith('breakwater_proxy_shadow_comparisons_total{')) continue
    const value = Number(line.slice(line.lastIndexOf(' ') + 1))
    if (line.includes('result="skipped"')) skipped += value
    else ran += value
  }
  return { ran, skipped }
}
