// Repairs the ARIA of Dash 4.4.1's dcc.Dropdown and dcc.RadioItems/Checklist, which axe-core
// reports as serious (issue 21 item 5; tests/dashboard/test_access.py). Written against
// dash 4.4.1's async-dropdown.js and dash_core_components.js: check it again on an upgrade.
//  - Dropdown: Tab lands on a hidden proxy input (aria-hidden, yet focusable) that hands focus
//    on to the untabbable trigger button. Here the button itself is the tab stop (it opens the
//    list with Enter, Space or ArrowDown) and the proxy leaves the tab order.
//  - RadioItems / Checklist: a listbox of role="option" labels, each around a native radio or
//    checkbox (interactive inside interactive, and a listbox without a name). The native
//    inputs in their labels say everything already: the roles go.
//  - DataTable: its keyboard handler takes Enter and Tab for moving between cells (and cancels
//    them), so a link in a cell could not be followed by keyboard and Tab could not leave the
//    table. On a link, those two keys now do what they do everywhere else.
// A file of this origin, not inline: the Content-Security-Policy allows it (dashboard/headers.py).
(function () {
  'use strict';
  function set(el, name, value) {
    if (el.getAttribute(name) !== value) { el.setAttribute(name, value); }
  }
  function repair() {
    document.querySelectorAll('.dash-dropdown-focus-target').forEach(function (proxy) {
      set(proxy, 'tabindex', '-1');
      const button = proxy.parentElement && proxy.parentElement.querySelector('button.dash-dropdown');
      if (button && !button.disabled) { set(button, 'tabindex', '0'); }
    });
    document.querySelectorAll('.dash-options-list-option[role], .dash-options-list-option[aria-selected]')
      .forEach(function (label) {
        label.removeAttribute('role');
        label.removeAttribute('aria-selected');
      });
    document.querySelectorAll('[role="listbox"]').forEach(function (list) {
      if (list.querySelector(':scope > .dash-options-list-option, :scope input[type=radio], :scope input[type=checkbox]')) {
        list.removeAttribute('role');
      }
    });
  }
  function start() {
    repair();
    new MutationObserver(repair).observe(document.body, {
      subtree: true, childList: true, attributes: true,
      attributeFilter: ['tabindex', 'role', 'aria-selected', 'disabled']});
  }
  document.addEventListener('keydown', function (e) {
    const t = e.target;
    if ((e.key === 'Enter' || e.key === 'Tab') && t instanceof HTMLAnchorElement
        && t.closest('.dash-spreadsheet, .dash-spreadsheet-container')) {
      e.stopPropagation();  // capture phase, before React's listener on the app's root
    }
  }, true);
  if (document.readyState === 'loading') {
    document.addEventListener('DOMContentLoaded', start);
  } else {
    start();
  }
}());
