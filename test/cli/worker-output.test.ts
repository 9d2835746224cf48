// forwardLines: what the proxy's primary passes on from each worker's stdout pipe reaches its
// output a whole line at a time, however the pipe cuts the text.
import { PassThrough } from 'node:stream'
import { describe, expect, it } from 'vitest'
import { forwardLines } from '../../src/cli/worker-output.js'

describe('forwardLines', () => {
  it('writes only whole lines when two sources are cut mid-line and mid-character', async () => {
    const writes: string[] = []
    const output = { write: (text: string) => writes.push(text) }
    const a = new PassThrough()
    const b = new PassThrough()
    const done = Promise.all([forwardLines(a, output), forwardLines(b, output)])
    const lineA = `${JSON.stringify({ msg: 'a', path: 'é'.repeat(3000) })}\n`
    const lineB = `${JSON.stringify({ msg: 'b', path: '日本'.repeat(2000) })}\n`
    const bytesA = Buffer.from(lineA + lineA)
    const bytesB = Buffer.from(lineB)
    // Alternating pieces of 1001 bytes: cuts fall inside lines and inside characters.
    for (let at = 0; at < Math.max(bytesA.length, bytesB.length); at += 1001) {
      if (at < bytesA.length) a.write(bytesA.subarray(at, at + 1001))
      if (at < bytesB.length) b.write(bytesB.subarray(at, at + 1001))
    }
    a.end()
    b.end()
    await done
    expect(writes.every((w) => w.endsWith('\n'))).toBe(true)
    expect(writes.join('').split('\n').filter(Boolean).sort()).toEqual(
      [lineA, lineA, lineB].map((l) => l.slice(0, -1)).sort(),
    )
  })

  it('passes on a last line without a line feed when the source ends, with one added', async () => {
    const writes: string[] = []
    const source = new PassThrough()
    const done = forwardLines(source, { write: (text: string) => writes.push(text) })
    source.end('{"msg":"whole"}\n{"msg":"cut')
    await done
    expect(writes).toEqual(['{"msg":"whole"}\n', '{"msg":"cut\n'])
  })

  it('keeps going when the output throws', async () => {
    let calls = 0
    const source = new PassThrough()
    const done = forwardLines(source, {
      write: () => {
        calls++
        throw new Error('EPIPE')
      },
    })
    source.write('one\n')
    source.end('two\n')
    await done
    expect(calls).toBe(2)
  })
})
