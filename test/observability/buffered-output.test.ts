import { spawnSync } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import { describe, expect, it } from 'vitest'
import { createBufferedOutput } from '../../src/observability/buffered-output.js'
import { createJsonLogger } from '../../src/observability/logger.js'

/** An output that records each write it gets. */
function recordingOutput() {
  const writes: string[] = []
  return { writes, write: (text: string) => writes.push(text) }
}

const nextTurn = () => new Promise((resolve) => setImmediate(resolve))

describe('createBufferedOutput', () => {
  it('writes the lines of one event-loop turn in one write, in order', async () => {
    const out = recordingOutput()
    const buffered = createBufferedOutput(out, { flushOnExit: false })
    buffered.write('a\n')
    buffered.write('b\n')
    buffered.write('c\n')
    expect(out.writes).toEqual([])
    await nextTurn()
    expect(out.writes).toEqual(['a\nb\nc\n'])
    buffered.write('d\n')
    await nextTurn()
    expect(out.writes).toEqual(['a\nb\nc\n', 'd\n'])
  })

  it('writes at once when maxBytes fill, without waiting for the turn to end', () => {
    const out = recordingOutput()
    const buffered = createBufferedOutput(out, { maxBytes: 6, flushOnExit: false })
    buffered.write('ab\n')
    expect(out.writes).toEqual([])
    buffered.write('cd\n')
    expect(out.writes).toEqual(['ab\ncd\n'])
  })

  it('flush() writes now; close() flushes and then writes straight through', () => {
    const out = recordingOutput()
    const buffered = createBufferedOutput(out, { flushOnExit: false })
    buffered.write('a\n')
    buffered.flush()
    expect(out.writes).toEqual(['a\n'])
    buffered.flush()
    expect(out.writes).toEqual(['a\n'])
    buffered.write('b\n')
    buffered.close()
    buffered.write('c\n')
    expect(out.writes).toEqual(['a\n', 'b\n', 'c\n'])
  })

  it('gathers a JSON logger’s lines', async () => {
    const out = recordingOutput()
    const logger = createJsonLogger({ output: createBufferedOutput(out, { flushOnExit: false }) })
    for (let i = 0; i < 5; i++) logger.info('access', { n: i })
    await nextTurn()
    expect(out.writes).toHaveLength(1)
    const lines = out.writes[0]!.trimEnd().split('\n')
    expect(lines.map((line) => (JSON.parse(line) as { n: number }).n)).toEqual([0, 1, 2, 3, 4])
  })

  it('loses nothing at process exit, even with lines logged just before process.exit()', () => {
    const module = fileURLToPath(
      new URL('../../src/observability/buffered-output.ts', import.meta.url),
    )
    const script = `
      import { createBufferedOutput } from ${JSON.stringify(module)}
      const out = createBufferedOutput(process.stdout)
      for (let i = 0; i < 1000; i++) out.write('line ' + i + '\\n')
      process.exit(0)
    `
    const run = spawnSync(
      process.execPath,
      ['--import', 'tsx', '--input-type=module', '-e', script],
      {
        encoding: 'utf8',
      },
    )
    expect(run.status).toBe(0)
    const lines = run.stdout.trimEnd().split('\n')
    expect(lines).toHaveLength(1000)
    expect(lines.at(-1)).toBe('line 999')
  })

  it('refuses a bad output or option, naming it', () => {
    expect(() => createBufferedOutput({} as never)).toThrow(/output/)
    expect(() => createBufferedOutput(recordingOutput(), { maxBytes: 0 })).toThrow(/maxBytes/)
    expect(() => createBufferedOutput(recordingOutput(), { flushOnExit: 'yes' as never })).toThrow(
      /flushOnExit/,
    )
  })
})
