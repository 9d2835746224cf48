// Red-team probes of the forward path (src/proxy/upstream/), through the real
// `breakwater proxy` process with raw upstream sockets. Each test states the behaviour the
// issue asks for. Failing at the time of writing (routed to the upstream engineer): the
// deadline passed on under the configured `deadlineHeader`. The others pass and stay as
// regression tests (short body, a pooled connection poisoned by extra bytes, CL + TE).
import { mkdtempSync, writeFileSync } from 'node:fs'
import { createServer as createNetServer, type Server as NetServer, type Socket } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { eventually, http } from '../runtime/helpers.js'
import { sendRaw } from '../support/raw-http.js'
import { ensureBuilt, freePort, type ProxyProcess, spawnProxy } from './proxy-process.js'

const dir = mkdtempSync(join(tmpdir(), 'bw-proxy-upstream-findings-'))

// A raw upstream: reads one request head, records it, and writes whatever `answer` returns.
interface RawUpstream {
  readonly port: number
  readonly heads: string[]
  close(): Promise<void>
}

async function rawUpstream(answer: (head: string, socket: Socket) => void): Promise<RawUpstream> {
  const heads: string[] = []
  const sockets = new Set<Socket>()
  const server: NetServer = createNetServer((socket) => {
    sockets.add(socket)
    socket.on('close', () => sockets.delete(socket))
    socket.on('error', () => {})
    let buffered = ''
    socket.on('data', (data: Buffer) => {
      buffered += data.toString('latin1')
      const end = buffered.indexOf('\r\n\r\n')
      if (end === -1) return
      const head = buffered.slice(0, end)
      buffered = buffered.slice(end + 4)
      heads.push(head)
      answer(head, socket)
    })
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  return {
    port: (server.address() as { port: number }).port,
    heads,
    close: () =>
      new Promise<void>((resolve) => {
        for (const socket of sockets) socket.destroy()
        server.close(() => resolve())
      }),
  }
}

function headerOf(head: string, name: string): string | undefined {
  const line = head.split('\r\n').find((l) => l.toLowerCase().startsWith(`${name.toLowerCase()}:`))
  return line?.slice(line.indexOf(':') + 1).trim()
}

let echo: RawUpstream
let lying: RawUpstream
let poisoning: RawUpstream
let framing: RawUpstream
let proxy: ProxyProcess
let out: number
let admin: number

beforeAll(async () => {
  ensureBuilt()
  echo = await rawUpstream((_head, socket) => {
    socket.write('HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok')
  })
  lying = await rawUpstream((_head, socket) => {
    // Announces 100 bytes, sends 3, then closes.
    socket.end('HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nabc')
  })
  // Answers every request with its response plus a second, unasked-for one in the same write
  // (and a HEAD with a body): a pooled connection that kept it would hand `POISON` to the next
  // client.
  let served = 0
  poisoning = await rawUpstream((head, socket) => {
    served++
    const body = `fresh-${served}`
    const extra = 'HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nPOISON'
    if (head.startsWith('HEAD ')) socket.write(`HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nPOISON`)
    else socket.write(`HTTP/1.1 200 OK\r\nContent-Length: ${body.length}\r\n\r\n${body}${extra}`)
  })
  // Content-Length and Transfer-Encoding together on a response.
  framing = await rawUpstream((_head, socket) => {
    socket.write(
      'HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n',
    )
  })
  out = await freePort()
  admin = await freePort()
  const file = join(dir, 'findings.yaml')
  writeFileSync(
    file,
    `services:
  echo: { endpoints: [http://127.0.0.1:${echo.port}] }
  lying: { endpoints: [http://127.0.0.1:${lying.port}] }
  poisoning: { endpoints: [http://127.0.0.1:${poisoning.port}], bulkhead: { connectionsPerEndpoint: 1 } }
  framing: { endpoints: [http://127.0.0.1:${framing.port}] }
listeners:
  - { name: outbound, role: ambassador, port: ${out} }
admin: { port: ${admin}, token: { env: FINDINGS_ADMIN_TOKEN } }
deadlineHeader: x-deadline-ms
`,
  )
  proxy = spawnProxy(['proxy', '--config', file], {
    FINDINGS_ADMIN_TOKEN: 'findings-admin-token-0123456789',
  })
  await eventually(
    async () => {
      if (proxy.child.exitCode !== null)
        throw new Error(`proxy exited:\n${proxy.stdout()}\n${proxy.stderr()}`)
      return (await http(admin, '/readyz').catch(() => ({ status: 0 }))).status === 200
    },
    'readyz 200',
    30_000,
  )
}, 180_000)

afterAll(async () => {
  proxy?.kill()
  await echo?.close()
  await lying?.close()
  await poisoning?.close()
  await framing?.close()
})

describe('upstream findings', () => {
  it('passes the deadline on under the configured deadlineHeader, not the default name', async () => {
    const response = await sendRaw(
      out,
      `GET /echo/x HTTP/1.1\r\nHost: 127.0.0.1:${out}\r\nX-Deadline-Ms: 3000\r\n\r\n`,
    )
    expect(response.status).toBe(200)
    const head = echo.heads.at(-1) ?? ''
    // The app behind speaks the configured header (the inbound side reads only that one).
    const passed = Number(headerOf(head, 'x-deadline-ms'))
    expect(passed, head).toBeGreaterThan(2_000)
    expect(passed, head).toBeLessThanOrEqual(3_000)
    expect(headerOf(head, 'x-breakwater-deadline-ms'), head).toBeUndefined()
  })

  it('a response shorter than its Content-Length reaches the client as a broken connection', async () => {
    const response = await sendRaw(out, `GET /lying/x HTTP/1.1\r\nHost: 127.0.0.1:${out}\r\n\r\n`, {
      untilFirstResponse: false,
      timeoutMs: 5_000,
    })
    expect(response.timedOut).toBe(false)
    expect(response.closed).toBe(true)
    // Either the proxy's own 502 before any byte, or the upstream head cut short: never a
    // complete-looking response the client could take as the whole body.
    if (response.status === 200) {
      expect(response.headers['content-length']).toBe('100')
      expect(response.body.length).toBeLessThan(100)
    } else {
      expect(response.status).toBe(502)
    }
  })

  it('never hands one client the bytes an upstream sent past the response another asked for', async () => {
    const bodies: string[] = []
    for (let i = 0; i < 4; i++) {
      const method = i === 1 ? 'HEAD' : 'GET'
      const response = await sendRaw(
        out,
        `${method} /poisoning/${i} HTTP/1.1\r\nHost: 127.0.0.1:${out}\r\nConnection: close\r\n\r\n`,
        { timeoutMs: 3_000, untilFirstResponse: false },
      )
      expect(response.timedOut).toBe(false)
      if (method === 'GET') bodies.push(`${response.status} ${response.body}`)
    }
    expect(bodies).toHaveLength(3)
    for (const body of bodies) expect(body).toMatch(/^200 fresh-\d+$/)
  })

  it('refuses a response with both Content-Length and Transfer-Encoding (502)', async () => {
    const response = await sendRaw(
      out,
      `GET /framing/x HTTP/1.1\r\nHost: 127.0.0.1:${out}\r\n\r\n`,
      {
        timeoutMs: 3_000,
      },
    )
    expect(response.status).toBe(502)
  })
})
