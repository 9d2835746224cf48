// The admin port answered a half-sent request head with 408 only after about 53 s, the gateway
// after about 10 s: both set node's headersTimeout to 10 s, but node checks it on
// connectionsCheckingInterval (30 s by default), which only the listeners shortened. The admin
// server now takes the listeners' timeouts and checks them as often; short ones here, so the
// test waits well under a second.
import { connect } from 'node:net'
import { describe, expect, it } from 'vitest'
import type { AdminServer } from '../../../src/proxy/admin/server.js'
import { useTestAdmin } from './admin-support.js'

const startAdmin = useTestAdmin()

function start(headersTimeoutMs: number, requestTimeoutMs: number): Promise<AdminServer> {
  return startAdmin({ headersTimeoutMs, requestTimeoutMs })
}

/** Sends `head` and resolves with what the server wrote before closing, and when. */
function halfSent(port: number, head: string): Promise<{ text: string; ms: number }> {
  return new Promise((resolve, reject) => {
    const started = Date.now()
    const socket = connect(port, '127.0.0.1', () => socket.write(head))
    let text = ''
    socket.setEncoding('utf8')
    socket.on('data', (chunk: string) => {
      text += chunk
    })
    socket.on('error', reject)
    socket.on('close', () => resolve({ text, ms: Date.now() - started }))
  })
}

describe('admin API request timeouts', () => {
  it('answers a half-sent head with 408 once headersTimeoutMs has passed', async () => {
    const admin = await start(200, 400)
    const answer = await halfSent(admin.address().port, 'GET /healthz HTTP/1.1\r\nHost: x\r\n')
    expect(answer.text).toMatch(/^HTTP\/1\.1 408 /)
    // Node's default check interval (30 s) would answer after the test's own timeout.
    expect(answer.ms).toBeLessThan(2_000)
  }, 5_000)

  it('refuses a headersTimeoutMs above requestTimeoutMs, as a listener does', async () => {
    await expect(start(500, 400)).rejects.toThrow(/headersTimeoutMs/)
  })
})
