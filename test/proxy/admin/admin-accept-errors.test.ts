// The admin API's server reports a failed accept (EMFILE / ENFILE) as an 'error' event; without
// a listener for it Node throws, ending the proxy. It is logged and the API keeps answering.
import type { Server } from 'node:http'
import { describe, expect, it } from 'vitest'
import { captureLog, http } from '../runtime/helpers.js'
import { useTestAdmin } from './admin-support.js'

const startAdmin = useTestAdmin()

// The admin API does not hand out its node:http server: found among the process's handles.
function serverOn(port: number): Server {
  const handles = (process as unknown as { _getActiveHandles(): unknown[] })._getActiveHandles()
  const server = handles.find(
    (h): h is Server =>
      typeof (h as Server)?.address === 'function' &&
      typeof (h as Server).listen === 'function' &&
      ((h as Server).address() as { port?: number } | null)?.port === port,
  )
  if (server === undefined) throw new Error(`no server on port ${port}`)
  return server
}

describe('admin API accept errors', () => {
  it('are logged and the API keeps answering', async () => {
    const log = captureLog()
    const admin = await startAdmin({ log })
    const { port } = admin.address()
    serverOn(port).emit(
      'error',
      Object.assign(new Error('accept EMFILE'), { code: 'EMFILE', syscall: 'accept' }),
    )
    expect(
      log
        .lines()
        .filter((l) => l.msg === 'accepting a connection failed' && l.component === 'admin'),
    ).toHaveLength(1)
    expect((await http(port, '/healthz')).status).toBe(200)
  })
})
