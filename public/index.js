// Landing page: say which mode this daemon advises.
import { fetchConfig } from './common.js';

const config = await fetchConfig(location.origin);
const el = document.getElementById('daemon-mode');
el.textContent = !config
  ? 'not reachable from this page'
  : `${config.ENABLE_RABBITMQ ? 'real time (RabbitMQ on)' : 'polling (RabbitMQ off)'}, ` +
    `poll interval ${Math.round(config.pollIntervalMs / 1000)} s, auth ${config.authRequired ? 'required' : 'off'}`;
