// `breakwater demo` answers bad arguments with exit 2 and never shows a password they hold:
// `--db` belongs to the shop, and given to `demo policies` it is quoted back as unknown.
import { EventEmitter } from 'node:events'
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterEach, describe, expect, it, vi } from 'vitest'
import { demoCommand } from '../../src/cli/demo.js'
import type { SignalTarget } from '../../src/process/index.js'

afterEach(() => {
  vi.restoreAllMocks()
})

describe('breakwater demo: a password in a bad argument', () => {
  const url = 'postgres://app:hunter2-pw@db/app'
  it.each([
    [['policies', `--db=${url}`]],
    [['policies', url]],
    [['policies', '--only', url]],
    [[`--dbx=${url}`]],
  ])('demo %j exits 2 without printing it', async (args) => {
    let stderr = ''
    vi.spyOn(process.stderr, 'write').mockImplementation((chunk: string | Uint8Array) => {
      stderr += String(chunk)
      return true
    })
    expect(await demoCommand(args)).toBe(2)
    expect(stderr).toContain('breakwater demo: ')
    expect(stderr).toContain('postgres://app:***@db/app')
    expect(stderr).not.toContain('hunter2')
  })
})

describe('breakwater demo: a word named like an Object member', () => {
  it.each([['constructor'], ['toString']])('demo %s is an unknown demo, exit 2', async (word) => {
    let stderr = ''
    vi.spyOn(process.stderr, 'write').mockImplementation((chunk: string | Uint8Array) => {
      stderr += String(chunk)
      return true
    })
    expect(await demoCommand([word])).toBe(2)
    expect(stderr).toContain(`breakwater demo: unknown demo "${word}" (known: shop, policies)`)
  })
})

describe('breakwater demo --db: a postgres:// URL that does not parse', () => {
  // It passed the scheme check, and failed only at the connection check, as "cannot open"
  // with exit 1: a bad argument is exit 2, known before anything is loaded or connected to.
  it.each([['postgres://app:hunter2-pw@127.0.0.1:abc/app'], ['postgres://app:hunter2-pw@[db/app']])(
    'demo --db %s exits 2 without printing its password',
    async (url) => {
      let stderr = ''
      vi.spyOn(process.stderr, 'write').mockImplementation((chunk: string | Uint8Array) => {
        stderr += String(chunk)
        return true
      })
      const loadShop = vi.fn(async () => async () => ({ ok: true }))
      expect(await demoCommand(['--db', url], { loadShop })).toBe(2)
      expect(stderr).toContain('breakwater demo: --db needs a valid postgres:// URL')
      expect(stderr).not.toContain('hunter2')
      expect(loadShop).not.toHaveBeenCalled()
    },
  )
})

describe('breakwater demo --db: every postgres:// URL the library opens', () => {
  // The demo checked --db with its own rules: WHATWG URL parsing (which refuses credentials
  // with a Unix socket host, a URL pg and openDatabase take) and a lower-case scheme only.
  it.each([
    ['postgres://app:hunter2-pw@/app?host=/var/run/postgresql'],
    ['POSTGRES://app@db/app'],
    ['PostgreSQL://app@db/app'],
  ])('demo --db %s is taken', async (url) => {
    let stderr = ''
    vi.spyOn(process.stderr, 'write').mockImplementation((chunk: string | Uint8Array) => {
      stderr += String(chunk)
      return true
    })
    // Stops the run before anything connects: the arguments were taken by then.
    const loadShop = vi.fn(async (): Promise<never> => {
      throw new Error('not built here')
    })
    expect(await demoCommand(['--db', url], { loadShop })).toBe(1)
    expect(loadShop).toHaveBeenCalled()
    expect(stderr).not.toContain('hunter2')
  })
})

describe('breakwater demo: --help or -h where a value would go', () => {
  // As every other command (wantsHelp): a flag is never a separate value, and the help flag is
  // a request for the usage wherever it stands. `--json -h` ran the shop and wrote its summary
  // to a file named -h; `--only -h` was an unknown scenario. `--flag=-h` is still a value.
  it.each([
    [['--json', '-h']],
    [['--json', '--help']],
    [['--db', '--help']],
    [['policies', '--only', '-h']],
    [['policies', '--only', '--help']],
  ])('demo %j prints the usage, exit 0, runs nothing', async (args) => {
    let stdout = ''
    vi.spyOn(process.stdout, 'write').mockImplementation((chunk: string | Uint8Array) => {
      stdout += String(chunk)
      return true
    })
    const loadShop = vi.fn(async () => async () => ({ ok: true }))
    expect(await demoCommand(args, { loadShop })).toBe(0)
    expect(stdout).toContain('usage: breakwater demo')
    expect(loadShop).not.toHaveBeenCalled()
  })

  it('takes -h as the value of --flag=-h', async () => {
    let stderr = ''
    vi.spyOn(process.stderr, 'write').mockImplementation((chunk: string | Uint8Array) => {
      stderr += String(chunk)
      return true
    })
    expect(await demoCommand(['policies', '--only=-h'])).toBe(2)
    expect(stderr).toContain('unknown scenario "-h"')
  })
})

// The shop's flags take a separate value that is itself a flag as a missing value; --only of
// `demo policies` took it as a scenario: `demo policies --only --port 4310` said 'unknown
// scenario "--port"', naming the wrong thing.
describe('breakwater demo policies --only followed by a flag', () => {
  it.each([[['policies', '--only', '--port', '4310']], [['policies', '--only', '--quiet']]])(
    'demo %j says --only has no value, exit 2',
    async (args) => {
      let stderr = ''
      vi.spyOn(process.stderr, 'write').mockImplementation((chunk: string | Uint8Array) => {
        stderr += String(chunk)
        return true
      })
      expect(await demoCommand(args)).toBe(2)
      expect(stderr).toContain('breakwater demo: --only needs a list of scenarios, got nothing')
    },
  )
})

// `--duration 0` (run until Ctrl-C) plays no chaos script: its steps are placed at fractions of
// the duration. `demo --duration 0 --chaos lost-replies` printed "chaos: lost-replies" and
// played nothing (0 replies lost), so `--break inbox` beside it showed no defect to catch.
describe('breakwater demo --duration 0 and a chaos script', () => {
  const runWith = async (args: string[]) => {
    let stderr = ''
    vi.spyOn(process.stderr, 'write').mockImplementation((chunk: string | Uint8Array) => {
      stderr += String(chunk)
      return true
    })
    const runs: { chaos: string }[] = []
    const code = await demoCommand(args, {
      signals: new EventEmitter() as unknown as SignalTarget,
      loadShop: async () => async (options) => {
        runs.push(options)
        return { ok: true }
      },
    })
    return { code, stderr, runs }
  }

  it.each([['lost-replies'], ['default']])(
    'refuses --chaos %s, which it would not play, exit 2',
    async (script) => {
      const { code, stderr, runs } = await runWith(['--duration', '0', '--chaos', script])
      expect(code).toBe(2)
      expect(stderr).toContain(
        `breakwater demo: --chaos ${script} is played over --duration, and --duration 0 has none: give a duration, or --chaos none (the chaos by hand, from the dashboard)`,
      )
      expect(runs).toEqual([])
    },
  )

  it('runs without a script when --chaos is not given, and says so (chaos: none)', async () => {
    const { code, runs } = await runWith(['--duration', '0', '--quiet'])
    expect(code).toBe(0)
    expect(runs.map((r) => r.chaos)).toEqual(['none'])
  })
})

// npm runs a script in the package's folder: under `npm start -- --json out.json` a relative
// path was written there, not in the folder the user typed the command in (npm's INIT_CWD).
describe('breakwater demo --json under npm', () => {
  const npmStart = { npm_lifecycle_event: 'start', npm_package_name: 'breakwater' }
  const otherScript = { npm_lifecycle_event: 'e2e', npm_package_name: 'shop-tests' }

  // Runs the demo with `env` and INIT_CWD set to a new folder; resolves with that folder and the
  // demo's exit code and stderr.
  async function runFrom(
    env: Record<string, string>,
    args: string[],
    check: (started: string, code: number, stderr: string) => void,
  ): Promise<void> {
    const started = mkdtempSync(join(tmpdir(), 'breakwater-demo-json-'))
    try {
      for (const [name, value] of Object.entries({ ...env, INIT_CWD: started }))
        vi.stubEnv(name, value)
      let stderr = ''
      vi.spyOn(process.stderr, 'write').mockImplementation((chunk: string | Uint8Array) => {
        stderr += String(chunk)
        return true
      })
      vi.spyOn(process.stdout, 'write').mockImplementation(() => true)
      const loadShop = vi.fn(async () => async () => ({ ok: true }))
      check(started, await demoCommand(args, { loadShop }), stderr)
    } finally {
      vi.unstubAllEnvs()
      rmSync(started, { recursive: true, force: true })
    }
  }

  it('resolves a relative file against the folder npm start was typed in', async () => {
    await runFrom(npmStart, ['--json', 'summary.json'], (started, code) => {
      expect(code).toBe(0)
      expect(JSON.parse(readFileSync(join(started, 'summary.json'), 'utf8'))).toEqual({ ok: true })
      expect(existsSync(join(process.cwd(), 'summary.json'))).toBe(false)
    })
  })

  it('names the folder it resolved to when that folder is missing', async () => {
    await runFrom(npmStart, ['--json', 'nope/summary.json'], (started, code, stderr) => {
      expect(code).toBe(2)
      expect(stderr).toContain(`the folder ${join(started, 'nope')} does not exist`)
    })
  })

  it('keeps the current folder for a demo run by another npm script', async () => {
    await runFrom(otherScript, ['--json', 'nope/summary.json'], (_started, code, stderr) => {
      expect(code).toBe(2)
      expect(stderr).toContain(`the folder ${join(process.cwd(), 'nope')} does not exist`)
    })
  })
})
