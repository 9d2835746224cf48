import { type ChildProcess, spawn } from 'node:child_process'
import { connect, type Socket } from 'node:net'
import { afterEach, describe, expect, it } from 'vitest'
import { createHttpClient } from '../../src/http/index.js'
import { withDeadline } from '../../src/index.js'
import { ManualClock } from '../../src/testing/index.js'

// A listener that never accepts: a child process listens with a backlog of 1, then blocks its
// event loop. Once its accept queue is full the kernel drops further SYNs, so a connect to it
// hangs (as to a blackholed host) until the connect timeout or the kernel's SYN retries give up.
async function unacceptingListener(): Promise<{ port: number; stop(): void }> {
  const child: ChildProcess = spawn(process.execPath, [
    '-e',
    `const s = require('node:net').createServer().listen({ port: 0, host: '127.0.0.1', backlog: 1 }, () => {
       process.stdout.write(String(s.address().port) + '\\n', () => Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0))
     })`,
  ])
  const port = await new Promise<number>((resolve) =>
    child.stdout?.once('data', (d: Buffer) => resolve(Number(String(d).trim()))),
  )
  // Fill the accept queue: the first connection completes, the others hang.
  const fillers: Socket[] = []
  await new Promise<void>((resolve) => {
    for (let i = 0; i < 4; i++) {
      const socket = connect(port, '127.0.0.1', resolve)
      socket.on('error', () => {})
      fillers.push(socket)
    }
  })
  return {
    port,
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

describe('close() and attempts that ended while their connection was being opened', () => {
  it('does not wait for the connect of a request nobody waits for any more', async () => {
    const listener = await unacceptingListener()
    cleanup.push(() => listener.stop())
    const clock = new ManualClock()
    const client = createHttpClient({
      clock,
      services: {
        svc: {
          baseUrl: `http://127.0.0.1:${listener.port}`,
          retry: false,
          connectTimeoutMs: Number.POSITIVE_INFINITY,
        },
      },
    })
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
})
