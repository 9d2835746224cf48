import { afterEach, describe, expect, it, vi } from 'vitest'
import { createBufferedOutput } from '../../src/observability/buffered-output.js'
import { createJsonLogger } from '../../src/observability/logger.js'

const nextTurn = () => new Promise((resolve) => setImmediate(resolve))

/** An output whose write throws, as a closed stream or a full disk's does. */
function throwingOutput() {
  let calls = 0
  return {
    calls: () => calls,
    write(_text: string): never {
      calls++
      throw new Error('EPIPE: broken pipe, password=hunter2')
    },
  }
}

function spyStderr() {
  const reports: string[] = []
  vi.spyOn(process.stderr, 'write').mockImplementation((text: string | Uint8Array) => {
    reports.push(String(text))
    return true
  })
  return reports
}

afterEach(() => {
  vi.restoreAllMocks()
})

describe('a log output whose write throws', () => {
  it('never makes the log call throw; the first failure is reported once to stderr', () => {
    const reports = spyStderr()
    const out = throwingOutput()
    const log = createJsonLogger({ output: out })
    expect(() => log.info('a')).not.toThrow()
    expect(() => log.error('b', { n: 1 })).not.toThrow()
    expect(() => log.child({ c: 1 }).warn('c')).not.toThrow()
    expect(out.calls()).toBe(3)
    expect(reports).toHaveLength(1)
    expect(reports[0]).toMatch(/breakwater: a log output's write\(\) threw/)
    expect(reports[0]).toMatch(/EPIPE/)
    // The report masks secrets as a log line does.
    expect(reports[0]).not.toMatch(/hunter2/)
  })

  it('does not throw when stderr itself throws too', () => {
    vi.spyOn(process.stderr, 'write').mockImplementation(() => {
      throw new Error('stderr closed')
    })
    const log = createJsonLogger({ output: throwingOutput() })
    expect(() => log.info('a')).not.toThrow()
  })

  it('a buffered output whose inner write throws neither throws nor crashes the turn it flushes in', async () => {
    const reports = spyStderr()
    const uncaught: unknown[] = []
    const onUncaught = (error: unknown) => uncaught.push(error)
    process.on('uncaughtException', onUncaught)
    try {
      const buffered = createBufferedOutput(throwingOutput(), { flushOnExit: false, maxBytes: 8 })
      const log = createJsonLogger({ output: buffered })
      // Over maxBytes: flushed inside the log call.
      expect(() => log.info('a long enough line')).not.toThrow()
      buffered.write('x\n')
      // Flushed at the end of the turn, outside any log call.
      await nextTurn()
      expect(() => buffered.flush()).not.toThrow()
      buffered.close()
      expect(() => buffered.write('y\n')).not.toThrow()
      expect(uncaught).toEqual([])
      expect(reports).toHaveLength(1)
    } finally {
      process.off('uncaughtException', onUncaught)
    }
  })
})
