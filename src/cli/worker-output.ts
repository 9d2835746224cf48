import type { Readable } from 'node:stream'
import type { LogOutput } from '../observability/index.js'

// The workers of `breakwater proxy` with `workers > 1` log JSON lines as the primary does.
// Forked with the primary's stdout, N processes wrote to one pipe, where a write is atomic only
// up to PIPE_BUF (4 KiB on Linux): a longer one (an access line with a long path, or a turn's
// gathered lines, up to 64 KiB) that met a full pipe went in parts, and another worker's write
// landed between them, so a log collector reading slower than the proxy logged got lines cut in
// two and joined with another's. Each worker now writes to a pipe of its own, read here by the
// primary, which passes the text on a whole line at a time through its own output: the one
// writer of its stdout.

/** Text held without a line feed before it is passed on as it is (not a log line anyway). */
const maxHeldBytes = 8 * 1024 * 1024
const lineFeed = 0x0a

/**
 * Passes what `source` (a worker's stdout) gives to `output` in whole lines: each write ends
 * with a line feed, and text after the last one waits for the rest of its line. Resolves when
 * `source` ends or fails, after passing on what was left (with a line feed added, so the next
 * writer starts a line of its own).
 */
export function forwardLines(source: Readable, output: LogOutput): Promise<void> {
  let held: Buffer[] = []
  let heldBytes = 0
  const write = (chunks: Buffer[]): void => {
    try {
      output.write(Buffer.concat(chunks).toString('utf8'))
    } catch {
      // The output reports its own failures (see LogOutput); a worker's line is dropped as the
      // primary's own would be.
    }
  }
  return new Promise((resolve) => {
    source.on('data', (chunk: Buffer) => {
      // A line feed never occurs inside a multi-byte UTF-8 character, so cutting after one
      // never splits a character.
      let rest = chunk
      const end = chunk.lastIndexOf(lineFeed)
      if (end !== -1) {
        write([...held, chunk.subarray(0, end + 1)])
        held = []
        heldBytes = 0
        rest = chunk.subarray(end + 1)
        if (rest.length === 0) return
      }
      held.push(rest)
      heldBytes += rest.length
      if (heldBytes >= maxHeldBytes) {
        write(held)
        held = []
        heldBytes = 0
      }
    })
    const finish = (): void => {
      if (heldBytes > 0) write([...held, Buffer.from('\n')])
      held = []
      heldBytes = 0
      resolve()
    }
    source.once('end', finish)
    source.once('error', finish)
  })
}
