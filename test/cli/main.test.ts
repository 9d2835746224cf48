// The `breakwater` entry point itself: which stream the usage goes to, and the exit code.
import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { closeSync, existsSync, openSync } from 'node:fs'
import { describe, expect, it } from 'vitest'
import { cliNodeArgs, runCli } from '../process/cli-process.js'

describe('breakwater without a command', () => {
  it('prints the usage on stderr with exit 2 (asked for with --help: stdout, exit 0)', async () => {
    const missing = await runCli([])
    expect(missing.code).toBe(2)
    expect(missing.stderr).toContain('usage: breakwater <command>')
    expect(missing.stdout).toBe('')
    const asked = await runCli(['--help'])
    expect(asked.code).toBe(0)
    expect(asked.stdout).toContain('usage: breakwater <command>')
    expect(asked.stderr).toBe('')
  })
})

describe('breakwater --help', () => {
  it('says what the exit codes mean', async () => {
    const asked = await runCli(['--help'])
    expect(asked.stdout).toContain('exit codes:')
    expect(asked.stdout).toMatch(/^ {2}0 +success$/m)
    expect(asked.stdout).toMatch(/^ {2}1 +a failure at run time/m)
    expect(asked.stdout).toMatch(/^ {2}2 +a bad argument/m)
    expect(asked.stdout).toMatch(/^ {2}141 +the reader of the output went away/m)
    expect(asked.stdout).toMatch(/^ {2}143 +stopped by SIGTERM \(130: SIGINT\)/m)
  })
})

describe('breakwater help <command>', () => {
  it("prints that command's usage, and refuses a command that does not exist", async () => {
    const relay = await runCli(['help', 'relay'])
    expect(relay.code).toBe(0)
    expect(relay.stdout).toContain('usage: breakwater relay')
    // A subcommand's own usage: `help saga worker` is the worker's, not saga's.
    const worker = await runCli(['help', 'saga', 'worker'])
    expect(worker.code).toBe(0)
    expect(worker.stdout).toContain('usage: breakwater saga worker')
    const unknown = await runCli(['help', 'relais'])
    expect(unknown.code).toBe(2)
    expect(unknown.stderr).toContain('breakwater: unknown command "relais"')
  })
})

describe('breakwater migrate asks for help as the other commands do', () => {
  it.each([[['migrate', 'help']], [['migrate', '--db', '--help']]])(
    '%j prints the usage, exit 0',
    async (args) => {
      const result = await runCli(args)
      expect(result.code).toBe(0)
      expect(result.stdout).toContain('usage: breakwater migrate')
    },
  )
})

describe('breakwater <unknown command>', () => {
  it.each([['constructor'], ['toString'], ['postgres://app:hunter2-pw@db/app']])(
    '%s is one line naming it, exit 2 (no stack, no password)',
    async (name) => {
      const result = await runCli([name])
      expect(result.code).toBe(2)
      expect(result.stderr).toMatch(/^breakwater: unknown command "[^"\n]+"\n\nusage:/)
      expect(result.stderr).not.toContain('hunter2')
      expect(result.stderr).not.toContain('    at ')
    },
  )
})

describe('breakwater | a reader that goes away', () => {
  it('ends as a command killed by SIGPIPE (exit 141), without a stack', async () => {
    // `breakwater saga list | head -1`: Node ignores SIGPIPE, so the write fails with EPIPE.
    const child = spawn(process.execPath, [...cliNodeArgs(), 'saga', '--help'], {
      stdio: ['ignore', 'pipe', 'pipe'],
    })
    // Closed before the process writes anything (it has not even loaded yet).
    child.stdout.destroy()
    let stderr = ''
    child.stderr.setEncoding('utf8').on('data', (chunk: string) => {
      stderr += chunk
    })
    const [code] = (await once(child, 'exit')) as [number | null]
    expect(stderr).toBe('')
    expect(code).toBe(141)
  })
})

// Output that cannot be written for another reason (a full disk under `> report.json`, a log
// volume that filled up under the relay): the stdout 'error' listener threw it on, and Node
// printed a stack of the bundle's internals as an uncaught exception.
describe.runIf(existsSync('/dev/full'))('breakwater > a file on a full disk', () => {
  it.each([[['--help']], [['saga', '--help']]])('%j says so in one line, exit 1', async (args) => {
    const full = openSync('/dev/full', 'w')
    try {
      const child = spawn(process.execPath, [...cliNodeArgs(), ...args], {
        stdio: ['ignore', full, 'pipe'],
      })
      let stderr = ''
      child.stderr!.setEncoding('utf8').on('data', (chunk: string) => {
        stderr += chunk
      })
      const [code] = (await once(child, 'exit')) as [number | null]
      expect(stderr).toBe(
        'breakwater: cannot write the output: ENOSPC: no space left on device, write\n',
      )
      expect(code).toBe(1)
    } finally {
      closeSync(full)
    }
  })
})

describe('help as the first word, as wantsHelp reads it for every command', () => {
  // `breakwater relay help` is the relay's usage; `demo help` was an unknown demo (exit 2) and
  // `help help` an unknown command (exit 2).
  it.each([
    [['demo', 'help'], 'usage: breakwater demo'],
    [['help', 'demo'], 'usage: breakwater demo'],
    [['help', 'help'], 'usage: breakwater <command>'],
  ])('%j prints the usage on stdout, exit 0', async (args, usage) => {
    const result = await runCli(args)
    expect(result.code).toBe(0)
    expect(result.stdout).toContain(usage)
    expect(result.stderr).toBe('')
  })
})

describe('breakwater help with a flag for the command', () => {
  // `help --help` and `help -h` ask about help itself, as `help help` does; `help --version` and
  // `help -V` about the version command those flags stand for. Each was taken for the name of
  // a command: `unknown command "--help"`, exit 2.
  it.each([
    [['help', '--help'], 'usage: breakwater <command>'],
    [['help', '-h'], 'usage: breakwater <command>'],
    [['help', '--version'], 'usage: breakwater version'],
    [['help', '-V'], 'usage: breakwater version'],
  ])('%j prints the usage on stdout, exit 0', async (args, usage) => {
    const result = await runCli(args)
    expect(result.stderr).toBe('')
    expect(result.code).toBe(0)
    expect(result.stdout).toContain(usage)
  })
})
