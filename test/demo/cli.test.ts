import { afterEach, describe, expect, it, vi } from 'vitest'
import { demoCommand } from '../../src/cli/demo.js'
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
    [['--only', 'jitter'], 'unknown option "--only"'],
    [['--duration', '-1'], '--duration needs a number from 0 to 86400, got "-1"'],
    [['--rate'], '--rate needs a number from 0.1 to 500, got nothing'],
    [['--new-share=101'], '--new-share needs a number from 0 to 100, got "101"'],
    [['--chaos', 'storm'], '--chaos needs one of default, lost-replies, none'],
    [['--db', 'mysql://x'], '--db needs a postgres:// URL'],
    [['--broker', 'kafka://x'], '--broker needs a nats://, amqp:// or redis:// URL'],
    [['--break', 'everything'], '--break takes: payments-idempotency, inbox'],
  ])('rejects %j with a clear message and exit code 2', async (args, message) => {
    const err = capture(process.stderr)
    const out = capture(process.stdout)
    expect(await demoCommand(args)).toBe(2)
    expect(err()).toContain(`breakwater demo: ${message}`)
    expect(err()).toContain('usage:')
    expect(out()).toBe('')
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
