-- The table compose.yml's sluice streams; write to it to see the dashboard move.
CREATE TABLE items (id bigint PRIMARY KEY, name text NOT NULL, price numeric(12, 2));
INSERT INTO items SELECT i, 'item ' || i, i * 0.5 FROM generate_series(1, 1000) i;
