import { type ChildProcess, spawn } from 'node:child_process'
import type { Socket } from 'node:net'
import { afterEach, describe, expect, it } from 'vitest'
import { createHttpClient, type HttpClient } from '../../src/http/index.js'
import { withDeadline } from '../../src/index.js'
import { ManualClock } from '../../src/testing/index.js'
import { fillAcceptQueue, unacceptingListener } from '../support/unaccepting-listener.js'

// A listener that accepts one connection, answers its request with the head of a chunked body,
// then blocks its event loop: it accepts nothing more (a connect to it hangs once the accept
// queue is full) but sends the rest of the body when told, writing to the socket synchronously.
async function streamingThenUnaccepting(): Promise<{
  port: number
  /** Resolves once the head of the body is out and connects to the listener hang. */
  streaming(): Promise<void>
  /** Sends one more chunk of the body, or its end. */
  send(command: 'chunk' | 'end'): void
  stop(): void
}> {
  const child: ChildProcess = spawn(process.execPath, [
    '-e',
    `const fs = require('node:fs')
     const s = require('node:net').createServer((socket) => {
       let head = ''
       socket.on('data', (d) => {
         head += d
         if (!head.includes('\\r\\n\\r\\n')) return
         const fd = socket._handle.fd
         fs.writeSync(fd, 'HTTP/1.1 200 OK\\r\\ntransfer-encoding: chunked\\r\\n\\r\\n5\\r\\nfirst\\r\\n')
         process.stdout.write('streaming\\n', () => {
           const buf = Buffer.alloc(64)
           for (;;) {
             const n = fs.readSync(0, buf)
             if (n === 0) break
             const command = String(buf.subarray(0, n))
             if (command.includes('chunk')) fs.writeSync(fd, '4\\r\\nmore\\r\\n')
             if (command.includes('end')) fs.writeSync(fd, '0\\r\\n\\r\\n')
           }
           Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0)
         })
       })
     }).listen({ port: 0, host: '127.0.0.1', backlog: 1 }, () => {
       process.stdout.write(String(s.address().port) + '\\n')
     })`,
  ])
  const lines: string[] = []
  const waiters: Array<() => void> = []
  child.stdout?.on('data', (d: Buffer) => {
    lines.push(
      ...String(d)
        .split('\n')
        .filter((line) => line !== ''),
    )
    for (const wake of waiters.splice(0)) wake()
  })
  const line = async (test: (line: string) => boolean): Promise<string> => {
    for (;;) {
      const found = lines.find(test)
      if (found !== undefined) return found
      await new Promise<void>((resolve) => waiters.push(resolve))
    }
  }
  const port = Number(await line((l) => /^\d+$/.test(l)))
  let fillers: Socket[] = []
  return {
    port,
    // Once the head is out, the child blocks: from then on connects hang.
    async streaming() {
      await line((l) => l === 'streaming')
      fillers = await fillAcceptQueue(port)
    },
    send(command) {
      child.stdin?.write(`${command}\n`)
    },
    stop() {
      for (const socket of fillers) socket.destroy()
      child.kill('SIGKILL')
    },
  }
}

const cleanup: Array<() => void | Promise<void>> = []
afterEach(async () => {
  for (const c of cleanup.splice(0).reverse()) await c()
})

function within<T>(promise: Promise<T>, ms: number): Promise<T | 'still waiting'> {
  let timer: NodeJS.Timeout | undefined
  return Promise.race([
    promise,
    new Promise<'still waiting'>((resolve) => {
      timer = setTimeout(() => resolve('still waiting'), ms)
    }),
  ]).finally(() => clearTimeout(timer))
}

// A client without retry or connect timeout: a connect that hangs hangs for good.
function clientOf(port: number, clock: ManualClock): HttpClient {
  return createHttpClient({
    clock,
    services: {
      svc: {
        baseUrl: `http://127.0.0.1:${port}`,
        retry: false,
        connectTimeoutMs: Number.POSITIVE_INFINITY,
      },
    },
  })
}

describe('close() and attempts that ended while their connection was being opened', () => {
  it('does not wait for the connect of a request nobody waits for any more', async () => {
    const listener = await unacceptingListener()
    cleanup.push(() => listener.stop())
    const clock = new ManualClock()
    const client = clientOf(listener.port, clock)
    cleanup.push(() => client.service('svc').dispatcher.destroy())
    const call = withDeadline(100, () => client.request('svc', { path: '/' }), { clock }).catch(
      (error: unknown) => error,
    )
    await clock.advance(100)
    expect(((await call) as { code?: string }).code).toBe('DEADLINE_EXCEEDED')
    // The call is over: nothing of the client is in flight, so close() has nothing to wait for.
    // It used to wait for the connect, for good here (no connect timeout).
    expect(await within(client.close(), 2_000)).toBeUndefined()
  })

  it('waits for a body still streaming, then does not wait for a connect nobody waits for', async () => {
    const server = await streamingThenUnaccepting()
    cleanup.push(() => server.stop())
    const clock = new ManualClock()
    const client = clientOf(server.port, clock)
    const svc = client.service('svc')
    cleanup.push(() => svc.dispatcher.destroy())
    // A caller streaming through the pool: its call is over once the head is in, its body not.
    const response = await svc.execute(() => svc.dispatcher.request({ path: '/', method: 'GET' }))
    await server.streaming()
    const call = withDeadline(100, () => client.request('svc', { path: '/' }), { clock }).catch(
      (error: unknown) => error,
    )
    await clock.advance(100)
    expect(((await call) as { code?: string }).code).toBe('DEADLINE_EXCEEDED')

    const closing = client.close()
    const body = response.body.text()
    // Graceful: the body still streaming is let finish.
    expect(await within(closing, 200)).toBe('still waiting')
    server.send('chunk')
    expect(await within(closing, 100)).toBe('still waiting')
    server.send('end')
    expect(await body).toBe('firstmore')
    // Then only the request nobody waits for is left: close() used to wait for its connect, for
    // good here (no connect timeout).
    expect(await within(closing, 2_000)).toBeUndefined()
  })
})
