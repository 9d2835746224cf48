import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterEach, describe, expect, it, vi } from 'vitest'
import { type DemoCommandDeps, demoCommand } from '../../src/cli/demo.js'
import { runPoliciesDemo } from '../../src/demo/policies/index.js'
import { InvalidOptionError } from '../../src/index.js'

function capture(stream: NodeJS.WriteStream): () => string {
  let text = ''
  vi.spyOn(stream, 'write').mockImplementation((chunk: string | Uint8Array) => {
    text += String(chunk)
    return true
  })
  return () => text
}

afterEach(() => {
  vi.restoreAllMocks()
})

describe('breakwater demo (arguments)', () => {
  it('prints its usage for --help and exits 0', async () => {
    const out = capture(process.stdout)
    expect(await demoCommand(['--help'])).toBe(0)
    expect(out()).toContain('usage: breakwater demo [shop] [options]')
    expect(out()).toContain('breakwater demo policies [--only <scenario>')
    expect(await demoCommand(['policies', '-h'])).toBe(0)
    expect(await demoCommand(['shop', '--help'])).toBe(0)
  })

  it.each([
    [['--fast'], 'unknown option "--fast"'],
    [['stroll'], 'unknown demo "stroll"'],
    [['shop', 'shop'], 'unknown demo "shop"'],
    [['policies', 'policies'], 'unknown demo "policies"'],
    [['policies', '--only'], '--only needs a list of scenarios'],
    [['policies', '--only', 'jitter,retry'], 'unknown scenario "retry"'],
    [['policies', '--only', 'jitter', '--only=jitter'], '--only given twice'],
    [['policies', '--help=x'], '--help takes no value'],
    [['--only', 'jitter'], 'unknown option "--only"'],
    [['--duration', '-1'], '--duration needs a whole number of seconds from 0 to 86400, got "-1"'],
    [['--rate'], '--rate needs a number from 0.1 to 500, got nothing'],
    [['--new-share=101'], '--new-share needs a whole number from 0 to 100, got "101"'],
    [['--chaos', 'storm'], '--chaos needs one of default, lost-replies, none, got "storm"'],
    [
      ['--db', 'mysql://x'],
      '--db needs a postgres:// URL (SQLite is the default), got "mysql://x"',
    ],
    [
      ['--db', 'mysql://u:secret@x/db'],
      '--db needs a postgres:// URL (SQLite is the default), got "mysql://u:***@x/db"',
    ],
    [
      ['--broker', 'kafka://x'],
      '--broker needs a nats://, amqp:// or redis:// URL (the SQL queue is the default), got "kafka://x"',
    ],
    [
      ['--break', 'everything'],
      '--break needs one of payments-idempotency, inbox, got "everything"',
    ],
    // Ports are whole numbers 0..65535, refused before anything listens.
    [['--port', '1.5'], '--port needs a whole number from 0 to 65535, got "1.5"'],
    [['--port=65536'], '--port needs a whole number from 0 to 65535, got "65536"'],
    [['--port', '0x10'], '--port needs a whole number from 0 to 65535, got "0x10"'],
    [['--port', '1e3'], '--port needs a whole number from 0 to 65535, got "1e3"'],
    // Numbers are digits (seconds may carry their unit): blank or malformed is refused, not 0.
    [['--duration', ' '], '--duration needs a whole number of seconds from 0 to 86400, got " "'],
    [['--duration='], '--duration needs a whole number of seconds from 0 to 86400, got ""'],
    [
      ['--duration', '1.5'],
      '--duration needs a whole number of seconds from 0 to 86400, got "1.5"',
    ],
    [
      ['--duration', '10m'],
      '--duration needs a whole number of seconds from 0 to 86400, got "10m"',
    ],
    [['--quiesce', '0x1'], '--quiesce needs a whole number of seconds from 1 to 3600, got "0x1"'],
    [['--rate', '1e2'], '--rate needs a number from 0.1 to 500, got "1e2"'],
    [['--rate', ' 5'], '--rate needs a number from 0.1 to 500, got " 5"'],
    [['--new-share', '50.5'], '--new-share needs a whole number from 0 to 100, got "50.5"'],
    [['--rate', '--quiet'], '--rate needs a number from 0.1 to 500, got nothing'],
    // Boolean flags take no value; no flag is given twice.
    [['--quiet=1'], '--quiet takes no value'],
    [['--no-proxy=yes'], '--no-proxy takes no value'],
    [['--help=please'], '--help takes no value'],
    [['--db', 'postgres://a/x', '--db=postgres://b/y'], '--db given twice'],
    [['--quiet', '--quiet'], '--quiet given twice'],
    [['--port', '1', '--port', '2'], '--port given twice'],
    [['--break', 'inbox', '--break', 'inbox'], '--break inbox given twice'],
    [['--json', '--quiet'], '--json needs a file name'],
    [['--broker', 'nats://'], '--broker: not a URL with a host: "nats://"'],
    [['--fast=postgres://u:hunter2@h/db'], 'unknown option "--fast=postgres://u:***@h/db"'],
    // --json is checked at start: its folder must exist and the path must not be a folder.
    [
      ['--json', '/nonexistent/dir/out.json'],
      '--json /nonexistent/dir/out.json: the folder /nonexistent/dir does not exist',
    ],
    [['--json', tmpdir()], `--json ${tmpdir()} is a folder, not a file`],
  ])('rejects %j with a clear message and exit code 2', async (args, message) => {
    const err = capture(process.stderr)
    const out = capture(process.stdout)
    expect(await demoCommand(args)).toBe(2)
    expect(err()).toContain(`breakwater demo: ${message}`)
    expect(err()).toContain('usage:')
    expect(out()).toBe('')
    expect(err()).not.toContain('hunter2')
  })
})

describe('breakwater demo (start and end failures)', () => {
  let dir: string | undefined
  afterEach(() => {
    if (dir !== undefined) rmSync(dir, { recursive: true, force: true })
    dir = undefined
  })

  // A stand-in for the shop: records the options it got, runs `during`, resolves `result`.
  function fakeShop(result: object = { ok: true, figures: { orders: 3 } }, during = () => {}) {
    const runs: Record<string, unknown>[] = []
    const deps: DemoCommandDeps = {
      loadShop: async () => async (options) => {
        runs.push({ ...options })
        during()
        return { ok: true, ...result }
      },
    }
    return { runs, deps }
  }

  it('passes valid values through, seconds with or without their unit', async () => {
    capture(process.stdout)
    const { runs, deps } = fakeShop()
    const args = ['shop', '--duration', '45s', '--quiesce=5', '--rate', '2.5', '--port', '0']
    expect(await demoCommand([...args, '--quiet', '--break', 'inbox'], deps)).toBe(0)
    expect(runs[0]).toMatchObject({ durationS: 45, quiesceS: 5, rate: 2.5, port: 0, live: false })
    expect(runs[0]!.breaks).toEqual(['inbox'])
  })

  it('names --db and the reason in one line when the database cannot be opened, without its password', async () => {
    const err = capture(process.stderr)
    const { runs, deps } = fakeShop()
    const code = await demoCommand(['--db', 'postgres://demo:hunter2@127.0.0.1:1/x'], deps)
    expect(code).toBe(1)
    expect(err()).toBe(
      'breakwater demo: cannot open --db postgres://demo:***@127.0.0.1:1/x: connect ECONNREFUSED 127.0.0.1:1\n',
    )
    expect(runs).toHaveLength(0)
  })

  it('names --broker and the reason in one line when the broker cannot be reached', async () => {
    const err = capture(process.stderr)
    const { runs, deps } = fakeShop()
    expect(await demoCommand(['--broker', 'nats://127.0.0.1:1'], deps)).toBe(1)
    expect(err()).toBe(
      'breakwater demo: cannot reach --broker nats://127.0.0.1:1: connect ECONNREFUSED 127.0.0.1:1\n',
    )
    expect(runs).toHaveLength(0)
  })

  it('reports a shop that fails to start in one line, without a stack', async () => {
    const err = capture(process.stderr)
    const failure = new Error('notifications exited before it was ready: boom\n    at x (y.js:1:1)')
    const deps: DemoCommandDeps = {
      loadShop: async () => async () => {
        throw failure
      },
    }
    expect(await demoCommand([], deps)).toBe(1)
    expect(err()).toBe(
      'breakwater demo: the shop failed: notifications exited before it was ready: boom\n',
    )
  })

  it('writes --json only at the end, without creating it at start', async () => {
    capture(process.stdout)
    dir = mkdtempSync(join(tmpdir(), 'breakwater-demo-cli-'))
    const file = join(dir, 'out.json')
    let existedDuringRun = true
    const { runs, deps } = fakeShop(undefined, () => {
      existedDuringRun = existsSync(file)
    })
    expect(await demoCommand(['--json', file], deps)).toBe(0)
    expect(existedDuringRun).toBe(false)
    expect(runs[0]).not.toHaveProperty('json')
    expect(JSON.parse(readFileSync(file, 'utf8'))).toEqual({ ok: true, figures: { orders: 3 } })
  })

  it('overwrites an existing --json file', async () => {
    capture(process.stdout)
    dir = mkdtempSync(join(tmpdir(), 'breakwater-demo-cli-'))
    const file = join(dir, 'out.json')
    writeFileSync(file, 'old')
    expect(await demoCommand(['--json', file], fakeShop().deps)).toBe(0)
    expect(JSON.parse(readFileSync(file, 'utf8'))).toMatchObject({ ok: true })
  })

  it('prints the summary to stdout and one error line when --json cannot be written at the end', async () => {
    const out = capture(process.stdout)
    const err = capture(process.stderr)
    dir = mkdtempSync(join(tmpdir(), 'breakwater-demo-cli-'))
    const file = join(dir, 'out.json')
    // The path turns into a folder while the shop runs: the write at the end fails.
    const { deps } = fakeShop(undefined, () => mkdirSync(file))
    expect(await demoCommand(['--json', file], deps)).toBe(1)
    expect(JSON.parse(out())).toEqual({ ok: true, figures: { orders: 3 } })
    expect(err()).toMatch(
      new RegExp(`^breakwater demo: cannot write --json ${file}: EISDIR[^\n]*\n$`),
    )
  })
})

describe('runPoliciesDemo', () => {
  it('writes a compact report: header, numbered tables, conclusions, footer', async () => {
    const lines: string[] = []
    const result = await runPoliciesDemo({
      write: (line) => lines.push(line),
      only: ['breaker', 'jitter'],
      timeScale: 0.05,
      jitter: { clients: 60 },
      breaker: { calls: 80 },
    })
    expect(result.results.map((r) => r.scenario)).toEqual(['jitter', 'breaker'])
    expect(result.claimsShown).toBe(result.results.filter((r) => r.conclusion.holds).length)
    expect(lines[0]).toMatch(/^breakwater demo policies/)
    expect(lines).toContain('1. Jitter spreads retry waves (times x0.05)')
    expect(lines).toContain('2. The breaker takes load off a down service (times x0.05)')
    const footer = lines.slice(lines.lastIndexOf('') + 1).join(' ')
    expect(footer).toMatch(
      new RegExp(
        `^Done in \\d+\\.\\d s \\(event-loop delay p99 .+ms\\): ${result.claimsShown} of 2 claims shown`,
      ),
    )
    for (const line of lines) expect(line.length).toBeLessThanOrEqual(100)
    // Two scenarios take half of the ~60 lines the whole demo may use.
    expect(lines.length).toBeLessThanOrEqual(30)
    // The table rows line up under their header.
    const header = lines.findIndex((line) => line.includes('retry backoff'))
    const rows = lines.slice(header, header + 3)
    expect(new Set(rows.map((row) => row.length)).size).toBe(1)
    expect(rows[1]).toMatch(/^ {3}no jitter +60 /)
    const conclusions = lines.filter((line) => /^ {3}(=>|!!) /.test(line))
    expect(conclusions).toHaveLength(2)
  })

  it('validates its options', async () => {
    await expect(runPoliciesDemo({ only: ['nope' as never] })).rejects.toThrow(InvalidOptionError)
    await expect(runPoliciesDemo({ timeScale: 0 })).rejects.toThrow(/policiesDemo\.timeScale/)
  })
})
