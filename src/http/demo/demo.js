// The live chat demo: plain JS, no build step, served from the binary.
// Every text from the server is shown with textContent (never as HTML).
'use strict';

const api = '/api/v1';
const $ = (id) => document.getElementById(id);
const state = { token: null, chat: null, panes: [], after: 0 };

function showError(message) {
  $('error').textContent = message || '';
}

async function call(method, path, body) {
  const init = { method, headers: {} };
  if (body !== undefined) {
    init.headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  const response = await fetch(api + path, init);
  const text = await response.text();
  const data = text ? JSON.parse(text) : null;
  if (!response.ok) {
    const reason = data && data.error ? data.error : text;
    throw new Error(`${method} ${path}: ${response.status} ${reason}`);
  }
  return data;
}

const chatPath = () => `/applications/${encodeURIComponent(state.token)}/chats/${state.chat}`;

// One subscriber: an EventSource and the list it fills. The browser
// reconnects by itself after a drop and sends Last-Event-ID, so the
// service resumes after the last event this pane saw.
class Pane {
  constructor(root) {
    this.root = root;
    this.list = root.querySelector('.messages');
    this.status = root.querySelector('.status');
    this.source = null;
    this.opens = 0;
  }

  open() {
    this.close();
    this.list.replaceChildren();
    this.opens = 0;
    const source = new EventSource(api + chatPath() + '/events');
    this.source = source;
    source.onopen = () => {
      this.opens += 1;
      this.root.dataset.opens = String(this.opens);
      this.setStatus('live');
    };
    source.onerror = () => this.setStatus(source.readyState === EventSource.CLOSED ? 'closed' : 'reconnecting');
    source.addEventListener('message.created', (e) => this.created(JSON.parse(e.data)));
    source.addEventListener('message.updated', (e) => this.updated(JSON.parse(e.data)));
    source.addEventListener('message.deleted', (e) => this.deleted(JSON.parse(e.data)));
    source.addEventListener('chat.deleted', () => {
      this.setStatus('chat deleted');
      this.close();
    });
    source.addEventListener('reset', () => this.reset());
  }

  close() {
    if (this.source) this.source.close();
    this.source = null;
  }

  setStatus(text) {
    this.status.textContent = text;
    this.root.dataset.status = text;
  }

  item(number) {
    return this.list.querySelector(`li[data-number="${Number(number)}"]`);
  }

  // Each event adds an item, even one this pane already has: a duplicate
  // would show (the browser test counts them).
  created(m) {
    const li = document.createElement('li');
    li.value = m.number;
    li.dataset.number = String(m.number);
    const body = document.createElement('span');
    body.className = 'body';
    body.textContent = m.body;
    li.append(body);
    this.list.append(li);
  }

  updated(m) {
    const li = this.item(m.number);
    if (li) li.querySelector('.body').textContent = m.body;
  }

  deleted(m) {
    const li = this.item(m.number);
    if (li) li.classList.add('deleted');
  }

  // The service no longer holds the events after our last one: list the
  // chat again with the cursor, then go on live.
  async reset() {
    this.list.replaceChildren();
    let after = 0;
    for (;;) {
      const page = await call('GET', `${chatPath()}/messages?after=${after}&limit=100`);
      for (const m of page.messages) this.created(m);
      if (page.meta.next_after == null) break;
      after = page.meta.next_after;
    }
  }
}

async function openChat(token, chat) {
  state.token = token;
  state.chat = chat;
  state.after = 0;
  $('token').value = token;
  $('chat').value = String(chat);
  $('current').textContent = `application ${token}, chat ${chat}`;
  $('compose').hidden = false;
  $('history-list').replaceChildren();
  $('more').disabled = false;
  $('history-state').textContent = '';
  for (const pane of state.panes) pane.open();
}

$('create').addEventListener('click', async () => {
  showError();
  try {
    const app = await call('POST', '/applications', { name: 'live demo' });
    state.token = app.token;
    const chat = await call('POST', `/applications/${encodeURIComponent(app.token)}/chats`);
    await openChat(app.token, chat.number);
  } catch (e) {
    showError(e.message);
  }
});

$('open').addEventListener('click', async () => {
  showError();
  const token = $('token').value.trim();
  const chat = Number($('chat').value);
  if (!token || !(chat >= 1)) {
    showError('give a token and a chat number');
    return;
  }
  try {
    await call('GET', `/applications/${encodeURIComponent(token)}/chats/${chat}`);
    await openChat(token, chat);
  } catch (e) {
    showError(e.message);
  }
});

$('send-form').addEventListener('submit', async (event) => {
  event.preventDefault();
  showError();
  const body = $('body').value;
  try {
    await call('POST', `${chatPath()}/messages`, { body });
    $('body').value = '';
  } catch (e) {
    showError(e.message);
  }
});

$('edit-form').addEventListener('submit', async (event) => {
  event.preventDefault();
  showError();
  try {
    await call('PUT', `${chatPath()}/messages/${Number($('edit-number').value)}`, { body: $('edit-body').value });
  } catch (e) {
    showError(e.message);
  }
});

$('delete').addEventListener('click', async () => {
  showError();
  try {
    await call('DELETE', `${chatPath()}/messages/${Number($('edit-number').value)}`);
  } catch (e) {
    showError(e.message);
  }
});

// History by cursor: each page starts after the last number of the one
// before (meta.next_after), so a page costs the same at any depth.
$('more').addEventListener('click', async () => {
  showError();
  try {
    const page = await call('GET', `${chatPath()}/messages?after=${state.after}&limit=20`);
    for (const m of page.messages) {
      const li = document.createElement('li');
      li.value = m.number;
      li.dataset.number = String(m.number);
      li.textContent = m.body;
      $('history-list').append(li);
    }
    if (page.meta.next_after == null) {
      $('more').disabled = true;
      $('history-state').textContent = 'the end (so far: it may still be written)';
    } else {
      state.after = page.meta.next_after;
    }
  } catch (e) {
    showError(e.message);
  }
});

state.panes = [new Pane($('pane-a')), new Pane($('pane-b'))];
