// Why a shop process exited, from what it wrote to stderr. The services log nothing structured:
// a service that cannot start throws, and Node reports the uncaught error as the throwing
// line's location (`file:///…/nats.js:331`), its source and a caret, a blank line, then the
// error (`BrokerError: nats: cannot connect…`), its stack frames and its properties. The end of
// that text, or its first line, says nothing about the failure; the error's line does.

/** How long a reason may be: a message with a URL and a hint fits, a dumped object does not. */
const maxLength = 1_500

// An error's line as Node prints it: its name (`Error`, `TypeError`, `BrokerError`, with a code
// in brackets for Node's own errors), a colon, its message. At the start of the line: the
// indented `[cause]: Error: ...` inside the properties is the cause, not the error.
const errorLine = /^(?:[A-Z][\w$]*)?(?:Error|Exception)(?: \[[^\]]*\])?: \S/

// Lines that never explain anything: stack frames, the throwing line's location, Node's version.
const noise = /^\s+at |^file:\/\/\S+:\d+$|^node:\S+:\d+$|^Node\.js v\d/

/**
 * The reason a process gave for exiting, from its stderr: the first line of the uncaught error
 * Node reported (`BrokerError: nats: cannot connect to nats://…: TIMEOUT`), else the first
 * line that is neither blank nor a stack frame nor a location, else `nothing on stderr`.
 */
export function exitReason(stderr: string): string {
  const lines = stderr.split(/\r?\n/)
  const line =
    lines.find((l) => errorLine.test(l)) ??
    lines.find((l) => l.trim() !== '' && !noise.test(l)) ??
    'nothing on stderr'
  const reason = line.trim()
  return reason.length > maxLength ? `${reason.slice(0, maxLength)}...` : reason
}
