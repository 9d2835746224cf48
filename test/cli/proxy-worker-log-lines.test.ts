// `breakwater proxy` with workers writes whole JSON lines to stdout however slowly it is read.
// The workers used to share the primary's stdout: N processes writing to one pipe, where a write
// is atomic only up to PIPE_BUF (4 KiB on Linux). A longer one (a turn's access lines, up to
// 64 KiB) that met a full pipe went in parts, and another worker's write landed between them,
// so a log collector reading slower than the proxy logged got lines cut in two and joined with
// another's. Each worker now writes to a pipe of its own, which the primary reads and passes on
// a whole line at a time, the one writer of its stdout.

import { execFileSync, spawn } from 'node:child_process'
import {
  closeSync,
  constants,
  existsSync,
  mkdtempSync,
  openSync,
  readlinkSync,
  rmSync,
  writeFileSync,
} from 'node:fs'
import { request } from 'node:http'
import { Socket } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { cliNodeArgs } from '../process/cli-process.js'
import { type NamedUpstream, startNamedUpstream } from '../proxy/runtime/helpers.js'
import { until } from '../support/until.js'

let upstream: NamedUpstream
const dir = mkdtempSync(join(tmpdir(), 'bw-proxy-worker-lines-'))

beforeAll(async () => {
  upstream = await startNamedUpstream('app')
})
afterAll(async () => {
  await upstream.close()
  rmSync(dir, { recursive: true, force: true })
})

/** GET `path` on the proxy, resolving with the status once the answer is read. */
function get(port: number, path: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const req = request({ host: '127.0.0.1', port, path, agent: false }, (res) => {
      res.resume()
      res.on('end', () => resolve(res.statusCode ?? 0))
    })
    req.on('error', reject)
    req.end()
  })
}

// stdout is a real pipe (a FIFO), as a container runtime or `| collector` gives it; a spawn's
// 'pipe' is a socket pair, whose writes are not cut the same way.
describe.skipIf(process.platform === 'win32')(
  'breakwater proxy with workers, stdout read slowly',
  () => {
    it('writes every log line whole: no line of one worker is cut by another', async () => {
      const file = join(dir, 'proxy.yaml')
      writeFileSync(
        file,
        `services: { app: { endpoints: [${upstream.url}] } }\nlisteners: [{ name: out, role: ambassador, port: 0 }]\nworkers: 2\n`,
      )
      const fifo = join(dir, 'stdout')
      execFileSync('mkfifo', [fifo])
      const readEnd = openSync(fifo, constants.O_RDONLY | constants.O_NONBLOCK)
      const writeEnd = openSync(fifo, 'w')
      const child = spawn(process.execPath, [...cliNodeArgs(), 'proxy', '--config', file], {
        stdio: ['ignore', writeEnd, 'pipe'],
      })
      closeSync(writeEnd)
      const stdout = new Socket({ fd: readEnd, readable: true, writable: false })
      let out = ''
      let err = ''
      stdout.setEncoding('utf8').on('data', (chunk: string) => {
        out += chunk
      })
      const ended = new Promise<void>((resolve) => stdout.once('end', resolve))
      child.stderr!.setEncoding('utf8').on('data', (chunk: string) => {
        err += chunk
      })
      const exited = new Promise<number | null>((resolve) => child.once('exit', resolve))
      try {
        const started = () =>
          out.split('\n').filter((l) => l.includes('"msg":"proxy started"') && l.endsWith('}'))
        await until(() => started().length === 2, 'both workers to start')
        const port = (JSON.parse(started()[0]!) as { listeners: { port: number }[] }).listeners[0]!
          .port
        // Where /proc shows it (Linux): no worker writes to the collector's pipe itself.
        if (existsSync(`/proc/${child.pid}/fd/1`)) {
          expect(readlinkSync(`/proc/${child.pid}/fd/1`)).toBe(
            readlinkSync(`/proc/self/fd/${readEnd}`),
          )
          for (const line of started()) {
            const { pid } = JSON.parse(line) as { pid: number }
            expect(readlinkSync(`/proc/${pid}/fd/1`)).not.toBe(
              readlinkSync(`/proc/self/fd/${readEnd}`),
            )
          }
        }
        // Access lines of about 6 KiB, past PIPE_BUF each; the reader stops, so the pipe fills
        // and both workers' writes meet it full; then it reads again.
        stdout.pause()
        const long = `/app/${'x'.repeat(6000)}`
        let answered = 0
        const answers = Array.from({ length: 150 }, () =>
          get(port, long).then((status) => {
            answered++
            return status
          }),
        )
        await until(() => answered >= 8, 'some answers while stdout is not read')
        stdout.resume()
        expect(new Set(await Promise.all(answers))).toEqual(new Set([200]))
        child.kill('SIGTERM')
        expect(await exited, err).toBe(0)
        await ended
        const lines = out.split('\n').filter((l) => l !== '')
        const broken = lines.filter((l) => {
          try {
            JSON.parse(l)
            return false
          } catch {
            return true
          }
        })
        expect(broken.map((l) => `${l.slice(0, 80)}...${l.slice(-80)}`)).toEqual([])
        expect(lines.filter((l) => l.includes('"msg":"access"'))).toHaveLength(150)
      } finally {
        child.kill('SIGKILL')
        stdout.destroy()
      }
    }, 60_000)
  },
)
